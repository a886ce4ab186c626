"""What the guard needs from trained classifiers: a verdict on a conversation, and a running score on an answer.

The guard (`constitutional.guard`) and the evaluation depend on these protocols only, so a classifier is
replaceable (a test's fake, a keyword filter, a trained model) without either of them changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from constitutional.models.base import Message


class Verdict(BaseModel):
    score: float  # probability-like, 0..1: how likely the text is restricted content
    flagged: bool  # score crossed the classifier's calibrated threshold
    category: str | None = None  # most likely restricted category when flagged


class InputClassifier(Protocol):
    threshold: float

    def screen(self, conversations: Sequence[Sequence[Message]]) -> list[Verdict]:
        """One verdict per conversation (batched)."""
        ...


class AnswerStream(Protocol):
    """The running verdict on one answer being generated; fed text as it arrives."""

    def push(self, text: str) -> Verdict:
        """Add the next piece of the answer; the verdict covers everything pushed so far (the running maximum)."""
        ...

    def push_many(self, texts: Sequence[str]) -> list[tuple[Verdict, int]]:
        """Add several pieces at once: per piece, the verdict and the tokens scored once it is in. A model scores
        them in one step (a guard that fell behind its upstream catches up); by default, one push each."""
        return [(self.push(text), self.tokens) for text in texts]

    def count(self, text: str) -> int:
        """Tokens in `text`, in the classifier's tokenizer, without scoring it: the guard waits for a step's worth
        of text before it pushes."""
        ...

    @property
    def tokens(self) -> int:
        """Tokens of the answer scored so far, in the classifier's tokenizer."""
        ...


Push = tuple[AnswerStream, Sequence[str]]  # a stream, and the texts of one step for its `push_many`
Outcome = list[tuple[Verdict, int]] | Exception  # what one push gave: its (verdict, tokens) per text, or an error


class OutputClassifier(Protocol):
    threshold: float

    def start(self, conversation: Sequence[Message]) -> AnswerStream:
        """Begin scoring an answer to `conversation`; each push costs one step on the cached prefix."""
        ...

    def push_batch(self, pushes: Sequence[Push]) -> list[Outcome]:
        """`stream.push_many(texts)` for each (stream, texts) of this classifier's streams, in order; a push that
        raised gives its exception, so one stream's failure leaves the others scored. A model scores them all in one
        step (the guard batches the streams that are waiting); by default, one push_many each."""
        outcomes: list[Outcome] = []
        for stream, texts in pushes:
            try:
                outcomes.append(stream.push_many(texts))
            except Exception as err:
                outcomes.append(err)
        return outcomes
