"""The guard around our own transformers generation, without a server: prompts are screened before generating,
and each answer goes through the same output gate as a streamed one, fed token by token and scored in steps,
stopping its row of the batch when flagged (through the backend's `watch` hook). Used by the evaluation and the
demo; a LanguageModel itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from constitutional.classifiers.screening import InputClassifier, OutputClassifier, Verdict
from constitutional.guard.gate import OutputGate, Piece, refusal_after, score_together
from constitutional.guard.settings import DEFAULT_HOLD_BACK, DEFAULT_REFUSAL, DEFAULT_STEP_TOKENS
from constitutional.models.base import Message, Prompt, SamplingParams, cut_at_stop
from constitutional.models.hf import TransformersModel


@dataclass
class GuardedAnswer:
    """One answer as the guard left it."""

    text: str  # what the user gets: the answer, the refusal, or what was released before a halt and the refusal
    blocked: str | None  # None, "input" or "output"
    verdict: Verdict | None  # the verdict that blocked it
    released: str  # the answer text the user saw: all of it unless halted, nothing when blocked at input
    tokens_scored: int  # answer tokens the output classifier read (its tokenizer)


class GuardedModel:
    """A TransformersModel with the guard around `generate`; scoring choices passes straight through."""

    def __init__(
        self,
        model: TransformersModel,
        input_classifier: InputClassifier,
        output_classifier: OutputClassifier,
        hold_back_tokens: int = DEFAULT_HOLD_BACK,
        refusal_message: str = DEFAULT_REFUSAL,
        step_tokens: int = DEFAULT_STEP_TOKENS,
    ):
        self.model = model
        self.input, self.output = input_classifier, output_classifier
        self.hold_back, self.refusal, self.step_tokens = hold_back_tokens, refusal_message, step_tokens
        self.name = f"{model.name}+guard"

    @property
    def context_window(self) -> int | None:
        return self.model.context_window

    @property
    def has_chat_template(self) -> bool:
        return self.model.has_chat_template

    def prompt_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        return self.model.prompt_tokens(prompts)

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        return self.model.choice_logprobs(prompts, choices)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        return [answer.text for answer in self.answer(prompts, params)]

    def answer(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[GuardedAnswer]:
        """Screen every prompt in one input-classifier call, generate the rest in the backend's batches with the
        output gate watching each row."""
        conversations = [conversation(prompt) for prompt in prompts]
        verdicts = self.input.screen(conversations)
        allowed = [i for i, verdict in enumerate(verdicts) if not verdict.flagged]
        answers: list[GuardedAnswer | None] = [
            None if not verdict.flagged else GuardedAnswer(self.refusal, "input", verdict, "", 0)
            for verdict in verdicts
        ]
        if not allowed:
            return answers
        gates = [OutputGate(self.output, conversations[i], self.hold_back, self.step_tokens) for i in allowed]
        watch = Watch(self.model.tokenizer, gates)
        texts = self.model.generate([prompts[i] for i in allowed], params, watch=watch)
        watch.finish()
        for i, text, gate, row in zip(allowed, texts, gates, watch.rows, strict=True):
            tokens = gate.halt.tokens if gate.halt else sum(s.tokens for s in gate.streams.values())
            if gate.error is not None:
                raise gate.error  # in-process there is no client to keep answering: a broken classifier is loud
            if gate.halt is None:
                answers[i] = GuardedAnswer(text, None, None, text, tokens)
                continue
            released = cut_at_stop(row.text[: row.released], params.stop)
            text = released + refusal_after(gate.released_text, self.refusal)
            answers[i] = GuardedAnswer(text, "output", gate.halt.verdict, released, tokens)
        return answers


def conversation(prompt: Prompt) -> list[Message]:
    """What the classifiers read for a prompt: its messages, or a raw transcript as one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


@dataclass
class _Row:
    """Incremental decoding of one answer (the text of new tokens only, never the whole answer each step)."""

    text: str = ""
    prefix: int = 0  # token offsets as in text-generation-inference's incremental detokenizer
    read: int = 0
    answer: torch.Tensor | None = None  # the answer's tokens at the last step
    released: int = 0  # characters of `text` the gate has released


class Watch:
    """The backend's `watch`: per batch, a stopping criterion that feeds each row's new text to its gate."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, gates: Sequence[OutputGate[int]]):
        self.tokenizer = tokenizer
        self.gates = gates
        self.rows = [_Row() for _ in gates]

    def __call__(self, prompt_length: int, indices: list[int]) -> StoppingCriteria:
        return _StopWhenHalted(self, prompt_length, indices)

    def step(self, indices: Sequence[int], answers: torch.Tensor) -> list[bool]:
        """Score what each row's answer tokens added since the last step, the rows' classifier steps together; per
        row, whether it is halted."""
        entries = []
        for index, answer in zip(indices, answers, strict=True):
            if self._live(index):
                row = self.rows[index]
                row.answer = answer
                entries.append((index, self._new_text(row, answer[row.prefix :].tolist()), False))
        self._score(entries)
        return [not self._live(index) for index in indices]

    def finish(self) -> None:
        """Score the end of each answer: what waits for a step, and what the last tokens add even if they end
        mid-character (the user gets them too)."""
        self._score(
            [
                (index, self._new_text(row, row.answer[row.prefix :].tolist(), final=True), True)
                for index, row in enumerate(self.rows)
                if self._live(index) and row.answer is not None
            ]
        )

    def _live(self, index: int) -> bool:
        gate = self.gates[index]
        return gate.halt is None and gate.error is None

    def _score(self, entries: list[tuple[int, str, bool]]) -> None:
        """Per (row, the text it added, whether it ended): that text to the row's gate, all gates scored together."""
        work = []
        for index, piece, final in entries:
            row = self.rows[index]
            pieces = []
            if piece:
                row.text += piece
                pieces.append(Piece(len(row.text), {0: piece}))
            if pieces or final:
                work.append((index, pieces, final))
        released = score_together([(self.gates[index], pieces, final) for index, pieces, final in work])
        for (index, _, _), payloads in zip(work, released, strict=True):
            self.rows[index].released = max([self.rows[index].released, *payloads])

    def _new_text(self, row: _Row, ids: list[int], final: bool = False) -> str:
        """The text the tokens after `row.read` add, decoding from `row.prefix` on (`ids` starts there) so a token
        that joins its neighbours (a space, a multi-byte character) reads right; empty while a character is cut,
        unless it is the `final` piece."""
        decode = lambda part: self.tokenizer.decode(part, skip_special_tokens=True)  # noqa: E731
        before = decode(ids[: row.read - row.prefix])
        after = decode(ids)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        row.prefix, row.read = row.read, row.prefix + len(ids)
        return after[len(before) :]


class _StopWhenHalted(StoppingCriteria):
    def __init__(self, watch: Watch, prompt_length: int, indices: list[int]):
        self.watch, self.prompt_length, self.indices = watch, prompt_length, indices

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        halted = self.watch.step(self.indices, input_ids[:, self.prompt_length :])
        return torch.tensor(halted, dtype=torch.bool, device=input_ids.device)
