"""A conversation: the statements people wrote and the participant-by-statement vote matrix."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

AGREE, DISAGREE, PASS = 1.0, -1.0, 0.0


@dataclass(frozen=True)
class Statement:
    id: str
    text: str


@dataclass(frozen=True)
class Vote:
    """One vote as read from a file; `order` breaks ties between equal (or absent) timestamps."""

    participant: str
    statement: str
    value: float
    timestamp: float | None
    order: int


@dataclass(frozen=True)
class Conversation:
    """Statements (matrix columns), participants (rows) and their latest votes; NaN marks a statement not seen."""

    name: str
    source: str
    format: str
    statements: tuple[Statement, ...]
    participants: tuple[str, ...]
    votes: np.ndarray = field(repr=False)
    moderated_out: tuple[Statement, ...] = ()
    votes_read: int = 0
    topic: str | None = None
    attribution: str | None = None
    # The group each participant was given by the tool that ran the conversation (Polis's `group-id`), if known.
    reference_groups: dict[str, int] | None = None

    @property
    def slug(self) -> str:
        """The name as a constitution id: lower case, digits and dashes."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "conversation"


def latest_votes(votes: Iterable[Vote]) -> dict[tuple[str, str], float]:
    """The vote standing for each (participant, statement): the latest by timestamp, then by place in the file."""
    standing: dict[tuple[str, str], tuple[float, int, float]] = {}
    for vote in votes:
        key = (vote.participant, vote.statement)
        rank = (-np.inf if vote.timestamp is None else vote.timestamp, vote.order)
        previous = standing.get(key)
        if previous is None or rank >= previous[:2]:
            standing[key] = (*rank, vote.value)
    return {key: value for key, (_, _, value) in standing.items()}


def vote_matrix(
    statements: tuple[Statement, ...], standing: dict[tuple[str, str], float]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Participants (sorted, numerically where ids are numbers) and their matrix of standing votes."""
    column = {statement.id: index for index, statement in enumerate(statements)}
    kept = {key: value for key, value in standing.items() if key[1] in column}
    participants = tuple(sorted({participant for participant, _ in kept}, key=_natural))
    row = {participant: index for index, participant in enumerate(participants)}
    matrix = np.full((len(participants), len(statements)), np.nan)
    for (participant, statement), value in kept.items():
        matrix[row[participant], column[statement]] = value
    return participants, matrix


def _natural(identifier: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, the rest after them in text order."""
    try:
        # isdigit() accepts digits int() refuses ("²") and Python caps int() at 4300 digits: ask int() itself.
        return (0, int(identifier), "")
    except ValueError:
        return (1, 0, identifier)
