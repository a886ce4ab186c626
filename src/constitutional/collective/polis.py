"""Reading a Polis export folder: comments.csv, votes.csv and (for comparison) participants-votes.csv.

Polis marks a comment's moderation as 1 (accepted), 0 (not yet moderated) or -1 (moderated out). Only -1 is
dropped, as Polis's own analysis drops only those. A voter may vote on a comment more than once; the latest vote
stands, as it does in Polis.
"""

from __future__ import annotations

from pathlib import Path

from constitutional.collective.conversation import Conversation, Statement, Vote, latest_votes, vote_matrix
from constitutional.collective.tables import Row, read_csv
from constitutional.errors import InputError

COMMENTS, VOTES, PARTICIPANTS, SUMMARY = "comments.csv", "votes.csv", "participants-votes.csv", "summary.csv"
MODERATED_OUT = -1


def is_polis_export(folder: Path) -> bool:
    return (folder / COMMENTS).is_file() and (folder / VOTES).is_file()


def read_polis_export(folder: Path, attribution: str | None = None) -> Conversation:
    """The conversation in a Polis export folder; participants-votes.csv and summary.csv are optional."""
    kept, dropped = _comments(folder / COMMENTS)
    known = {statement.id for statement in (*kept, *dropped)}
    votes = _votes(folder / VOTES, known)
    participants, matrix = vote_matrix(kept, latest_votes(votes))
    groups_file = folder / PARTICIPANTS
    return Conversation(
        name=folder.resolve().name,
        source=str(folder),
        format="polis",
        statements=kept,
        participants=participants,
        votes=matrix,
        moderated_out=dropped,
        votes_read=len(votes),
        topic=_topic(folder / SUMMARY),
        attribution=attribution,
        reference_groups=_polis_groups(groups_file) if groups_file.is_file() else None,
    )


def _comments(path: Path) -> tuple[tuple[Statement, ...], tuple[Statement, ...]]:
    kept, dropped, seen = [], [], set()
    for row in read_csv(path, ("comment-id", "moderated", "comment-body")):
        identifier = str(row.integer("comment-id"))
        if identifier in seen:
            raise row.error("comment-id", f"comment {identifier} appears twice", "each comment has one row")
        seen.add(identifier)
        moderation = row.integer("moderated")
        if moderation not in (-1, 0, 1):
            raise row.error("moderated", f"'{moderation}' is not a moderation state", "use 1, 0 or -1")
        statement = Statement(id=identifier, text=row.text("comment-body"))
        (dropped if moderation == MODERATED_OUT else kept).append(statement)
    if not kept:
        raise InputError(
            "no comment is left once moderated-out ones are dropped",
            path=path,
            hint="the export needs comments whose moderated value is 1 or 0",
        )
    return tuple(sorted(kept, key=_number)), tuple(sorted(dropped, key=_number))


def _number(statement: Statement) -> int:
    return int(statement.id)


def _votes(path: Path, known: set[str]) -> list[Vote]:
    votes = []
    for order, row in enumerate(read_csv(path, ("comment-id", "voter-id", "vote"))):
        statement = str(row.integer("comment-id"))
        if statement not in known:
            raise row.error("comment-id", f"vote on comment {statement}, which comments.csv lacks", _EXPORT_HINT)
        votes.append(
            Vote(
                participant=str(row.integer("voter-id")),
                statement=statement,
                value=row.vote("vote"),
                timestamp=_timestamp(row),
                order=order,
            )
        )
    return votes


_EXPORT_HINT = "use comments.csv and votes.csv from the same Polis export"


def _timestamp(row: Row) -> float | None:
    if "timestamp" not in row.values:
        return None
    value = row.integer("timestamp", required=False)
    return None if value is None else float(value)


def _polis_groups(path: Path) -> dict[str, int]:
    """The group Polis gave each participant; participants it left out of its groups have an empty group-id."""
    groups = {}
    for row in read_csv(path, ("participant", "group-id")):
        group = row.integer("group-id", required=False)
        if group is not None:
            groups[str(row.integer("participant"))] = group
    return groups


def _topic(path: Path) -> str | None:
    """The conversation's topic line from summary.csv (`topic,<text>`), if the export has one."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(",")
        if key.strip() == "topic" and value.strip():
            return value.strip()
    return None
