"""The output gate: no piece of an answer is released before it is scored, and none before enough text after it has
been scored too; a flag withholds everything not yet released.

The server feeds it the upstream's stream events, the in-process guard the text each generation step adds. It is
plain synchronous code, so the server runs it in a thread and the in-process guard calls it directly.

Pieces are scored in steps: they wait, unscored and unsent, until their text comes to `step_tokens` tokens (or the
answer ends), and one classifier step (`AnswerStream.push_many`) scores them together. A trained classifier's step
is a forward pass that costs about as much for 16 tokens as for 1, so the step size divides its cost per token.

Tokens are counted in the output classifier's own tokenizer (`AnswerStream.count` before scoring, the tokens each
`push_many` reports after), not per upstream chunk: llama.cpp sends a token per chunk, vLLM several, hosted APIs
word groups; counted by the classifier, a step of S tokens and a hold-back of B tokens mean the same text whatever
the upstream's chunking.
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

    @property
    def has_text(self) -> bool:
        return any(self.texts.values())


@dataclass
class Halt:
    """Why an answer was stopped: the choice whose verdict crossed the threshold, and that verdict."""

    choice: int
    verdict: Verdict
    tokens: int  # tokens of that choice scored, the flagged piece included


class OutputGate(Generic[Payload]):
    """One AnswerStream per choice. Pieces wait unscored until a step's worth of tokens has come (`step_tokens`),
    then, scored, until `hold_back` scored tokens follow them."""

    def __init__(
        self, classifier: OutputClassifier, conversation: Sequence[Message], hold_back: int, step_tokens: int
    ):
        self.classifier = classifier
        self.conversation = list(conversation)
        self.hold_back = hold_back
        self.step_tokens = step_tokens
        self.halt: Halt | None = None
        self.error: Exception | None = None
        self.released_text = False  # whether any answer text has gone out yet
        self.streams: dict[int, AnswerStream] = {}
        self.scored: dict[int, list[str]] = {}  # the text pushed per choice, joined only for an audit line
        self._unscored: list[Piece[Payload]] = []  # from the first piece with text not yet scored on
        self._held: deque[tuple[Piece[Payload], int]] = deque()  # scored (or textless), with the tokens each added
        self._held_tokens = 0

    def score(self, pieces: Sequence[Piece[Payload]], final: bool = False) -> list[Payload]:
        """Take the next pieces; return the payloads now safe to send. `final`: the answer ended (or the upstream
        broke off) and nothing follows, so what waits unscored is scored now and, unflagged, everything goes out.

        Stops at a flag (`self.halt` says why), after which nothing held is ever released, or at a classifier error
        (`self.error`): then the unscored pieces stay held, unscored, for the caller's fail-open or fail-closed
        policy."""
        if self.halt is not None or self.error is not None:
            return []
        for piece in pieces:
            if self._unscored or piece.has_text:
                self._unscored.append(piece)
            else:  # nothing to score: it waits only for the pieces before it
                self._held.append((piece, 0))
        released: list[Payload] = []
        try:
            if self._unscored and (final or self._step_due()):
                released = self._step()
        except Exception as err:
            self.error = err
            self._held.extend((piece, 0) for piece in self._unscored)
            self._unscored.clear()
            return []
        if self.halt is not None:
            return released
        released += self._release()
        return released + self._flush() if final else released

    def needs_classifier(self, pieces: Sequence[Piece[Payload]], final: bool = False) -> bool:
        """Whether `score(pieces, final)` may call the classifier (the server runs only those calls in its thread)."""
        if self.classifier is None or self.halt is not None or self.error is not None:
            return False
        return any(piece.has_text for piece in pieces) or (final and bool(self._unscored))

    def unscreened(self) -> list[Payload]:
        """Stop scoring (the fail-open path after a classifier error): what is held goes out now (returned), and
        what follows passes as it comes."""
        self.hold_back = 0
        self.classifier = None
        self.error = None
        return self._flush()

    def text(self, choice: int) -> str:
        return "".join(self.scored.get(choice, ()))

    def _stream(self, choice: int) -> AnswerStream:
        stream = self.streams.get(choice)
        if stream is None:
            stream = self.streams[choice] = self.classifier.start(self.conversation)
        return stream

    def _step_due(self) -> bool:
        """Whether the unscored text of some choice comes to a step's worth of tokens."""
        if self.classifier is None or self.step_tokens <= 1:
            return True
        texts: dict[int, list[str]] = {}
        for piece in self._unscored:
            for choice, text in piece.texts.items():
                texts.setdefault(choice, []).append(text)
        return any(self._stream(choice).count("".join(parts)) >= self.step_tokens for choice, parts in texts.items())

    def _step(self) -> list[Payload]:
        """Score every unscored piece in one classifier step, then hold or release them piece by piece, as if they
        had come one at a time: up to a flag, the same pieces go out."""
        steps = self._push(self._unscored)
        pieces, self._unscored = self._unscored, []
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

    def _push(self, pieces: Sequence[Piece[Payload]]) -> list[tuple[int, Halt | None]]:
        """Per piece, the tokens it added across choices and the halt it caused, if any: each choice's texts go to
        its stream in one `push_many`."""
        steps: list[tuple[int, Halt | None]] = [(0, None)] * len(pieces)
        if self.classifier is None:
            return steps
        for choice in sorted({choice for piece in pieces for choice, text in piece.texts.items() if text}):
            stream = self._stream(choice)
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
            if piece.has_text and self._held_tokens - tokens < self.hold_back:
                break
            self._held.popleft()
            self._held_tokens -= tokens
            self.released_text = self.released_text or piece.has_text
            released.append(piece.payload)
        return released

    def _flush(self) -> list[Payload]:
        """Everything held, which nothing can flag any more (the answer ended unflagged, or scoring stopped)."""
        released = [piece.payload for piece, _ in self._held]
        self.released_text = self.released_text or any(piece.has_text for piece, _ in self._held)
        self._held.clear()
        self._held_tokens = 0
        return released


def refusal_after(released_text: bool, message: str) -> str:
    """How a halted answer ends: the refusal message, after a blank line when part of the answer went out."""
    return f"\n\n{message}" if released_text and message else message
