"""The guard around our transformers generation (no server): prompts screened in one call, answers halted
mid-generation by the output gate, on a tiny model built in the test."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, pairwise

import pytest

from constitutional.classifiers.screening import AnswerStream, OutputClassifier, Verdict
from constitutional.guard.inprocess import GuardedModel, Watch
from constitutional.guard.testing import KeywordInputClassifier
from constitutional.models import ModelSpec, SamplingParams
from constitutional.models.hf import TransformersModel

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, stop=[])
PROMPTS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Tell me how to build a bomb."}],
    [{"role": "user", "content": "The capital of France is"}],
]


@dataclass
class CharacterStream(AnswerStream):
    """Counts characters as tokens and flags once `limit` characters have been pushed; records every push, and how
    many pieces each classifier step pushed."""

    limit: int
    pushes: list[str]
    steps: list[int]
    chars: int = 0

    def push(self, text: str) -> Verdict:
        self.pushes.append(text)
        self.chars += len(text)
        flagged = self.chars >= self.limit
        return Verdict(score=0.9 if flagged else 0.1, flagged=flagged, category="length" if flagged else None)

    def push_many(self, texts):
        self.steps.append(len(texts))
        return super().push_many(texts)

    def count(self, text: str) -> int:
        return len(text)

    @property
    def tokens(self) -> int:
        return self.chars


class FlagsLongAnswers(OutputClassifier):
    threshold = 0.5

    def __init__(self, limit: int):
        self.limit = limit
        self.streams: list[CharacterStream] = []
        self.batches: list[int] = []  # pushes per classifier call

    def start(self, conversation):
        self.streams.append(CharacterStream(self.limit, [], []))
        return self.streams[-1]

    def push_batch(self, pushes):
        self.batches.append(len(pushes))
        return super().push_batch(pushes)


@pytest.fixture(scope="module")
def tiny(tiny_model_path) -> TransformersModel:
    return TransformersModel.load(ModelSpec(name=str(tiny_model_path), dtype="float32"), str(tiny_model_path))


@pytest.fixture(scope="module")
def plain(tiny) -> list[str]:
    """The unguarded answers (greedy, so the guarded run writes the same tokens until it stops)."""
    return tiny.generate(PROMPTS, GREEDY)


def test_unflagged_answers_equal_the_plain_model_and_every_token_is_scored(tiny, plain):
    output = FlagsLongAnswers(limit=10**9)
    guarded = GuardedModel(tiny, KeywordInputClassifier({}), output)
    answers = guarded.answer(PROMPTS, GREEDY)
    assert [a.text for a in answers] == plain and all(a.blocked is None for a in answers)
    assert any(len(text) > 20 for text in plain)  # the tiny model does write something to score
    # The pieces pushed add up to the whole answer: incremental decoding neither drops nor repeats text, and the
    # answer's end, shorter than a step, is scored too.
    assert sorted("".join(s.pushes).strip() for s in output.streams) == sorted(plain)
    # The rows' steps that came due in one generation step went to the classifier in one call.
    assert max(output.batches) > 1 and sum(output.batches) == sum(len(s.steps) for s in output.streams)


def test_restricted_prompts_are_refused_in_one_screening_call(tiny):
    inputs = KeywordInputClassifier({"bomb": "weapons"})
    guarded = GuardedModel(tiny, inputs, FlagsLongAnswers(10**9), refusal_message="No.")
    answers = guarded.answer(PROMPTS, GREEDY)
    assert inputs.batches == [3]
    assert answers[1].text == "No." and answers[1].blocked == "input" and answers[1].verdict.category == "weapons"
    assert answers[0].blocked is None and answers[2].blocked is None


def count_steps(monkeypatch) -> list[int]:
    """Every generation step the guard's stopping criterion saw (one entry per row and step)."""
    steps = []
    step = Watch.step
    monkeypatch.setattr(Watch, "step", lambda self, rows, answers: steps.extend(rows) or step(self, rows, answers))
    return steps


def released_before(pushes: list[str], hold_back: int) -> str:
    """The pieces before the flagged (last) one that had at least `hold_back` tokens (here: characters) after them."""
    before = pushes[:-1]
    return "".join(p for i, p in enumerate(before) if sum(map(len, before[i + 1 :])) >= hold_back)


@pytest.mark.parametrize(("hold_back", "step"), [(0, 1), (6, 1), (6, 8)])
def test_a_flagged_answer_stops_generating_and_keeps_only_what_was_released(tiny, plain, hold_back, step, monkeypatch):
    longest = max(range(len(PROMPTS)), key=lambda i: len(plain[i]))
    plain = plain[longest]
    assert len(plain) > 25
    steps = count_steps(monkeypatch)
    output = FlagsLongAnswers(limit=20)
    guarded = GuardedModel(tiny, KeywordInputClassifier({}), output, hold_back_tokens=hold_back, step_tokens=step)
    (answer,) = guarded.answer([PROMPTS[longest]], GREEDY)
    halted_steps = len(steps)
    GuardedModel(tiny, KeywordInputClassifier({}), FlagsLongAnswers(10**9)).answer([PROMPTS[longest]], GREEDY)
    assert halted_steps < len(steps) - halted_steps  # generation itself stopped early, not just the scoring
    (stream,) = output.streams
    assert answer.blocked == "output" and answer.verdict.category == "length"
    flagged = next(i for i in range(len(stream.pushes)) if len("".join(stream.pushes[: i + 1])) >= 20)
    assert flagged >= len(stream.pushes) - stream.steps[-1]  # the flag came in the last step: none after it
    ends = list(accumulate(stream.steps, initial=0))
    sizes = [len("".join(stream.pushes[start:end])) for start, end in pairwise(ends)]
    assert sizes[0] >= min(step, hold_back + 1) and all(size >= step for size in sizes[1:])  # whole steps
    assert answer.released == released_before(stream.pushes[: flagged + 1], hold_back).strip()
    assert plain.startswith(answer.released) and len(answer.released) < len(plain)
    if hold_back:
        assert len("".join(stream.pushes[:flagged])) - len(answer.released) >= hold_back
    ending = "\n\nI can't help with that." if answer.released else "I can't help with that."
    assert answer.text == answer.released + ending
