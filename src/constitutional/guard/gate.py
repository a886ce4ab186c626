"""The output gate: every piece of an answer is scored as it arrives and released only once enough text after it
has been scored too; a flag withholds everything not yet released.

The server feeds it the upstream's stream events, the in-process guard the text each generation step adds. It is
plain synchronous code, so the server runs it in a thread and the in-process guard calls it directly.

Tokens are counted with `AnswerStream.tokens`, the output classifier's own tokenizer, not per upstream chunk:
llama.cpp sends a token per chunk, vLLM several, hosted APIs word groups; counted by the classifier, a hold-back of
B tokens means the same text whatever the upstream's chunking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from constitutional.classifiers.screening import AnswerStream, OutputClassifier, Verdict
from constitutional.models.base import Message

Payload = TypeVar("Payload")


@dataclass
class Piece(Generic[Payload]):
    """What the client receives if the piece is released (`payload`), and the answer text it adds per choice."""

    payload: Payload
    texts: dict[int, str] = field(default_factory=dict)


@dataclass
class Halt:
    """Why an answer was stopped: the choice whose verdict crossed the threshold, and that verdict."""

    choice: int
    verdict: Verdict
    tokens: int  # tokens of that choice scored, the flagged piece included


class OutputGate(Generic[Payload]):
    """Scores pieces with one AnswerStream per choice and holds back the last `hold_back` tokens' worth of them."""

    def __init__(self, classifier: OutputClassifier, conversation: Sequence[Message], hold_back: int):
        self.classifier = classifier
        self.conversation = list(conversation)
        self.hold_back = hold_back
        self.halt: Halt | None = None
        self.error: Exception | None = None
        self.released_text = False  # whether any answer text has gone out yet
        self.streams: dict[int, AnswerStream] = {}
        self.scored: dict[int, list[str]] = {}  # the text pushed per choice, joined only for an audit line
        self._held: deque[tuple[Piece[Payload], int]] = deque()
        self._held_tokens = 0

    def score(self, pieces: Sequence[Piece[Payload]]) -> list[Payload]:
        """Score pieces (each choice's texts in one classifier step); return the payloads now safe to send. Stops
        at a flag (`self.halt` says why), after which nothing held is ever released, or at a classifier error
        (`self.error`): then the pieces stay held, unscored, for the caller's fail-open or fail-closed policy."""
        if self.halt is not None or self.error is not None:
            return []
        try:
            steps = self._push(pieces)
        except Exception as err:
            self.error = err
            self._held.extend((piece, 0) for piece in pieces)
            return []
        released: list[Payload] = []
        for piece, (tokens, halt) in zip(pieces, steps, strict=True):
            for choice, text in piece.texts.items():
                if text:
                    self.scored.setdefault(choice, []).append(text)
            if halt is not None:
                self.halt = halt
                self._held.clear()
                break
            self._held.append((piece, tokens))
            self._held_tokens += tokens
            released.extend(self._release())
        return released

    def flush(self) -> list[Payload]:
        """The answer ended unflagged: everything held is scored and goes out."""
        if self.halt is not None:
            return []
        released = [piece.payload for piece, _ in self._held]
        self.released_text = self.released_text or any(any(piece.texts.values()) for piece, _ in self._held)
        self._held.clear()
        self._held_tokens = 0
        return released

    def unscreened(self) -> None:
        """Stop scoring (the fail-open path after a classifier error): what is held and what follows passes."""
        self.hold_back = 0
        self.classifier = None
        self.error = None

    def text(self, choice: int) -> str:
        return "".join(self.scored.get(choice, ()))

    def _push(self, pieces: Sequence[Piece[Payload]]) -> list[tuple[int, Halt | None]]:
        """Per piece, the tokens it added across choices and the halt it caused, if any: each choice's texts go to
        its stream in one `push_many`, so pieces that queued while the classifier was busy cost one step."""
        steps: list[tuple[int, Halt | None]] = [(0, None)] * len(pieces)
        if self.classifier is None:
            return steps
        for choice in sorted({choice for piece in pieces for choice, text in piece.texts.items() if text}):
            stream = self.streams.get(choice)
            if stream is None:
                stream = self.streams[choice] = self.classifier.start(self.conversation)
            before = stream.tokens
            indices = [index for index, piece in enumerate(pieces) if piece.texts.get(choice)]
            results = stream.push_many([pieces[index].texts[choice] for index in indices])
            for index, (verdict, tokens) in zip(indices, results, strict=True):
                added, halt = steps[index]
                if halt is None and verdict.flagged:
                    halt = Halt(choice, verdict, tokens)
                steps[index] = (added + max(0, tokens - before), halt)
                before = tokens
        return steps

    def _release(self) -> list[Payload]:
        """Release held pieces from the front while at least `hold_back` scored tokens follow them.

        A piece without answer text (a role chunk, a keep-alive) at the front reveals nothing and goes at once.
        """
        released = []
        while self._held:
            piece, tokens = self._held[0]
            if any(piece.texts.values()) and self._held_tokens - tokens < self.hold_back:
                break
            self._held.popleft()
            self._held_tokens -= tokens
            self.released_text = self.released_text or any(piece.texts.values())
            released.append(piece.payload)
        return released


def refusal_after(released_text: bool, message: str) -> str:
    """How a halted answer ends: the refusal message, after a blank line when part of the answer went out."""
    return f"\n\n{message}" if released_text and message else message
