"""The output gate: no piece of an answer is released before it is scored, and none before enough text after it has
been scored too; a flag withholds everything not yet released.

The server feeds it the upstream's stream events, the in-process guard the text each generation step adds. It is
plain synchronous code in two halves: `take` holds and counts pieces and says which classifier pushes are due,
`finish` releases what their outcomes allow. The server runs only the pushes in a thread, those of all its streams
in one `push_batch` (`score_together` does the same in one call).

Pieces are scored in steps: they wait, unscored and unsent, until their text comes to `step_tokens` tokens (or the
answer ends), and one classifier step (`AnswerStream.push_many`) scores them together. A trained classifier's step
is a forward pass that reads all its weights whatever the tokens (SmolLM2 cut after layer 15, in bfloat16 on one
thread: 14 ms for 1 token, 18 ms for 16, 28 ms for 32), so the step size divides its cost per token. Only an
answer's first step is shorter: hold-back + 1 tokens, all its first piece needs to go out, so the time to first
token waits for no more than the hold-back asks.

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

from constitutional.classifiers.screening import AnswerStream, Outcome, OutputClassifier, Push, Verdict
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
        self._taken: list[Piece[Payload]] = []  # the pieces of the step being scored, between take and finish
        self._choices: list[tuple[int, list[int], int]] = []  # per push: choice, its pieces, its tokens before
        self._final = False

    def score(self, pieces: Sequence[Piece[Payload]], final: bool = False) -> list[Payload]:
        """Take the next pieces; return the payloads now safe to send. `final`: the answer ended (or the upstream
        broke off) and nothing follows, so what waits unscored is scored now and, unflagged, everything goes out.

        Stops at a flag (`self.halt` says why), after which nothing held is ever released, or at a classifier error
        (`self.error`): then the unscored pieces stay held, unscored, for the caller's fail-open or fail-closed
        policy."""
        return score_together([(self, pieces, final)])[0]

    def take(self, pieces: Sequence[Piece[Payload]], final: bool = False) -> list[Push]:
        """The first half of `score`: take the pieces, and return the pushes a classifier step must make now (none
        while a step's worth of text has not come). `finish` takes what they gave."""
        self._final = final
        if self.halt is not None or self.error is not None:
            return []
        for piece in pieces:
            if self._unscored or piece.has_text:
                self._unscored.append(piece)
            else:  # nothing to score: it waits only for the pieces before it
                self._held.append((piece, 0))
        try:
            if self._unscored and (final or self._step_due()):
                self._taken, self._unscored = self._unscored, []
                return self._pushes()
        except Exception as err:
            self._fail(err)
        return []

    def finish(self, outcomes: Sequence[Outcome]) -> list[Payload]:
        """The second half of `score`: per push `take` returned, its results (or the exception it raised); the
        payloads now safe to send."""
        if self.halt is not None or self.error is not None:
            return []
        released: list[Payload] = []
        if self._taken:
            try:
                released = self._settle(outcomes)
            except Exception as err:
                self._fail(err)
                return []
        if self.halt is not None:
            return released
        released += self._release()
        return released + self._flush() if self._final else released

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

    def _step_size(self, choice: int) -> int:
        """Tokens a step of `choice` scores: just enough for the first piece to go out at first, then `step_tokens`."""
        return min(self.step_tokens, self.hold_back + 1) if self._stream(choice).tokens == 0 else self.step_tokens

    def _step_due(self) -> bool:
        """Whether the unscored text of some choice comes to a step's worth of tokens."""
        if self.classifier is None or self.step_tokens <= 1:
            return True
        texts: dict[int, list[str]] = {}
        for piece in self._unscored:
            for choice, text in piece.texts.items():
                texts.setdefault(choice, []).append(text)
        return any(
            self._stream(choice).count("".join(parts)) >= self._step_size(choice) for choice, parts in texts.items()
        )

    def _pushes(self) -> list[Push]:
        """Each choice's texts in the taken pieces, for its stream's one `push_many`."""
        self._choices = []
        if self.classifier is None:
            return []
        pushes = []
        for choice in sorted({choice for piece in self._taken for choice, text in piece.texts.items() if text}):
            stream = self._stream(choice)
            indices = [index for index, piece in enumerate(self._taken) if piece.texts.get(choice)]
            self._choices.append((choice, indices, stream.tokens))
            pushes.append((stream, [self._taken[index].texts[choice] for index in indices]))
        return pushes

    def _settle(self, outcomes: Sequence[Outcome]) -> list[Payload]:
        """Hold or release the taken pieces one by one, as if they had come one at a time: up to a flag, the same
        pieces go out."""
        per_piece = self._per_piece(outcomes)
        pieces, self._taken = self._taken, []
        released: list[Payload] = []
        for piece, (tokens, halt) in zip(pieces, per_piece, strict=True):
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

    def _per_piece(self, outcomes: Sequence[Outcome]) -> list[tuple[int, Halt | None]]:
        """Per taken piece, the tokens it added across choices and the halt it caused, if any."""
        steps: list[tuple[int, Halt | None]] = [(0, None)] * len(self._taken)
        for (choice, indices, before), outcome in zip(self._choices, outcomes, strict=True):
            if isinstance(outcome, Exception):
                raise outcome
            for index, (verdict, tokens) in zip(indices, outcome, strict=True):
                added, halt = steps[index]
                if halt is None and verdict.flagged:
                    halt = Halt(choice, verdict, tokens)
                steps[index] = (added + max(0, tokens - before), halt)
                before = tokens
        return steps

    def _fail(self, err: Exception) -> None:
        """A classifier error: what waits unscored is held, unscored, for the caller's policy."""
        self.error = err
        self._held.extend((piece, 0) for piece in [*self._taken, *self._unscored])
        self._taken, self._unscored = [], []

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


Entry = tuple[OutputGate[Payload], Sequence[Piece[Payload]], bool]  # a gate, its next pieces, whether last


def score_together(entries: Sequence[Entry]) -> list[list[Payload]]:
    """`gate.score(pieces, final)` for each entry, with the steps of all the gates that share a classifier scored in
    one `push_batch` (a trained classifier reads them in one forward pass). A push that fails fails its gate alone."""
    pushes = [gate.take(pieces, final) for gate, pieces, final in entries]
    outcomes: list[list[Outcome]] = [[] for _ in entries]
    sharing: dict[int, list[int]] = {}
    for index, (gate, _, _) in enumerate(entries):
        if pushes[index]:
            sharing.setdefault(id(gate.classifier), []).append(index)
    for members in sharing.values():
        together = push_together(entries[members[0]][0].classifier, [pushes[index] for index in members])
        for index, gate_outcomes in zip(members, together, strict=True):
            outcomes[index] = gate_outcomes
    return [gate.finish(outcome) for (gate, _, _), outcome in zip(entries, outcomes, strict=True)]


def push_together(classifier: OutputClassifier, pushes: Sequence[list[Push]]) -> list[list[Outcome]]:
    """Several gates' pushes (all to `classifier`) in one `push_batch`; per gate, the outcomes of its pushes. If the
    call itself fails, every push fails with it."""
    flat = [push for gate_pushes in pushes for push in gate_pushes]
    try:
        outcomes = classifier.push_batch(flat)
        if len(outcomes) != len(flat):
            raise ValueError(f"{len(outcomes)} outcomes for {len(flat)} pushes")
    except Exception as err:
        outcomes = [err] * len(flat)
    per_gate = []
    for gate_pushes in pushes:
        per_gate.append(outcomes[: len(gate_pushes)])
        outcomes = outcomes[len(gate_pushes) :]
    return per_gate


def refusal_after(released_text: bool, message: str) -> str:
    """How a halted answer ends: the refusal message, after a blank line when part of the answer went out."""
    return f"\n\n{message}" if released_text and message else message
