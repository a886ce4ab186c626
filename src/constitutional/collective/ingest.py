"""Loading a conversation: a Polis export folder, or plain statement and vote files from any other tool.

The plain format is a folder with two files, each CSV (with a header line) or JSONL:
- `statements.csv|jsonl`: `id`, `text`, and optionally `moderated` (-1 drops the statement, as in Polis);
- `votes.csv|jsonl`: `participant`, `statement`, `vote` (1 / -1 / 0 or agree / disagree / pass), and optionally
  `timestamp` (when a participant voted on a statement twice, the latest vote stands; without timestamps, the
  later line does).
"""

from __future__ import annotations

import re
from pathlib import Path

from constitutional.collective.conversation import Conversation, Statement, Vote, latest_votes, vote_matrix
from constitutional.collective.polis import is_polis_export, read_polis_export
from constitutional.collective.tables import Row, read_table
from constitutional.errors import InputError

PLAIN_FORMAT = "a Polis export (comments.csv, votes.csv) or statements.csv|jsonl with votes.csv|jsonl"
# Paragraphs of a data folder's README that carry its licence terms, which must travel with derived works.
_LICENCE = re.compile(r"\bCC[- ]?BY\b|\bCreative Commons\b", re.IGNORECASE)


def load_conversation(source: str | Path, attribution: str | None = None) -> Conversation:
    """The conversation in `source`; `attribution` defaults to the licence paragraph of a README beside the data."""
    folder = Path(source)
    if not folder.is_dir():
        raise InputError("not a folder", path=folder, hint=f"give a folder holding {PLAIN_FORMAT}")
    attribution = attribution or find_attribution(folder)
    if is_polis_export(folder):
        return read_polis_export(folder, attribution)
    statements, votes = _plain_file(folder, "statements"), _plain_file(folder, "votes")
    if statements is None or votes is None:
        raise InputError("no conversation found in this folder", path=folder, hint=f"it must hold {PLAIN_FORMAT}")
    return read_plain(statements, votes, attribution)


def read_plain(statements_path: Path, votes_path: Path, attribution: str | None = None) -> Conversation:
    kept, dropped = _statements(statements_path)
    known = {statement.id for statement in (*kept, *dropped)}
    votes = [_vote(row, order, known) for order, row in enumerate(read_table(votes_path, _VOTE_KEYS))]
    participants, matrix = vote_matrix(kept, latest_votes(votes))
    return Conversation(
        name=statements_path.resolve().parent.name,
        source=str(statements_path.parent),
        format="plain",
        statements=kept,
        participants=participants,
        votes=matrix,
        moderated_out=dropped,
        votes_read=len(votes),
        attribution=attribution,
    )


_VOTE_KEYS = ("participant", "statement", "vote")


def _plain_file(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{suffix}" for suffix in (".csv", ".jsonl") if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise InputError(f"both {found[0].name} and {found[1].name} exist", path=folder, hint="keep only one of them")
    return found[0] if found else None


def _statements(path: Path) -> tuple[tuple[Statement, ...], tuple[Statement, ...]]:
    kept, dropped, seen = [], [], set()
    for row in read_table(path, ("id", "text")):
        identifier = row.text("id")
        if identifier in seen:
            raise row.error("id", f"statement '{identifier}' appears twice", "give every statement its own id")
        seen.add(identifier)
        moderation = row.integer("moderated", required=False)
        if moderation not in (None, -1, 0, 1):
            raise row.error("moderated", f"'{moderation}' is not a moderation state", "use 1, 0 or -1")
        (dropped if moderation == -1 else kept).append(Statement(id=identifier, text=row.text("text")))
    if not kept:
        raise InputError("no statement to analyse", path=path, hint="add statements that are not moderated out")
    return tuple(kept), tuple(dropped)


def _vote(row: Row, order: int, known: set[str]) -> Vote:
    statement = row.text("statement")
    if statement not in known:
        raise row.error(
            "statement", f"vote on unknown statement '{statement}'", "every statement voted on needs a row"
        )
    timestamp = row.text("timestamp", required=False)
    return Vote(
        participant=row.text("participant"),
        statement=statement,
        value=row.vote("vote"),
        timestamp=None if timestamp is None else _number(row, "timestamp"),
        order=order,
    )


def _number(row: Row, column: str) -> float:
    value = row.text(column)
    try:
        return float(value)
    except ValueError:
        raise row.error(column, f"'{value}' is not a number", "write the time as a number (e.g. Unix ms)") from None


def find_attribution(folder: Path) -> str | None:
    """The licence paragraphs of a README in the data folder or the folder above it, joined into one text."""
    for directory in (folder, folder.resolve().parent):
        for readme in sorted(directory.glob("README*")):
            if not readme.is_file():
                continue
            paragraphs = re.split(r"\n\s*\n", readme.read_text(encoding="utf-8", errors="replace"))
            licence = [" ".join(p.split()) for p in paragraphs if _LICENCE.search(p)]
            if licence:
                return "\n".join(licence)
    return None
