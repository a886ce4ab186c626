"""AI-feedback questions: render, score by choice log-probs, combine.

A comparison is a multiple-choice question for a feedback model: the conversation, a comparison principle,
the two answers as options (A) and (B), then the start of an answer. Its label is the model's probability of
" (A)" against " (B)" read from one scoring pass, never from generated text. Optionally: few-shot
demonstrations, an ensemble over several principles, both option orders (position debiasing), and a chain of
thought written first, after which the (then overconfident) probability is clamped.

Shared by the rl_label stage (feedback.py) and the multiple-choice evaluation (evaluate/hhh.py); imports no stage.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from constitutional.constitution import ComparisonDemo, ComparisonPrinciple, Constitution
from constitutional.models.base import LanguageModel, Message, Prompt, SamplingParams, render_transcript, uses_chat
from constitutional.prompts import (
    ANSWER_PREFIX,
    COT_FOLLOWUP,
    COT_PREFIX,
    OPTION_LABELS,
    comparison_demonstration_turns,
    comparison_messages,
)

# Fewer words than this is not reasoning: the model stopped at once or only restated an option letter.
MIN_REASONING_WORDS = 3

DEFAULT_HELPFUL_PRINCIPLES = [
    "Which of these responses does more to actually help the user: accurate, complete, clear and to the point?",
    "Which of these responses would leave the user better informed and closer to getting done what they asked?",
    "Which of these responses answers the request more directly and correctly, without needless hedging?",
]


class FeedbackConfig(BaseModel):
    """AI feedback: the feedback model's multiple-choice preference between two answers."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(default=32, ge=1, description="Pairs labelled together; the unit of resume.")
    num_principles: int = Field(
        default=1, ge=1, description="Principles drawn per comparison; the label is their average (an ensemble)."
    )
    debias: bool = Field(
        default=False, description="Also score with the options swapped and average both orders (position bias)."
    )
    num_demonstrations: int = Field(
        default=1, ge=0, description="Worked comparisons from the constitution shown before each question."
    )
    cot: bool = Field(default=False, description="Let the feedback model reason step by step before answering.")
    clamp: bool = Field(default=True, description="In CoT mode, clamp each probability to [clamp-low, clamp-high].")
    clamp_low: float = Field(default=0.4, ge=0.0, le=1.0, description="Lower clamp bound for CoT probabilities.")
    clamp_high: float = Field(default=0.6, ge=0.0, le=1.0, description="Upper clamp bound for CoT probabilities.")
    cot_sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(max_new_tokens=96, temperature=0.0),
        description="How the chain of thought is generated (greedy by default, so labels are reproducible).",
    )
    helpful_principles: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HELPFUL_PRINCIPLES),
        min_length=1,
        description="Questions asked for helpfulness pairs (kind 'helpful'), drawn like comparison principles.",
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> FeedbackConfig:
        if self.clamp_low >= self.clamp_high:
            raise ValueError(f"clamp_low ({self.clamp_low}) must be below clamp_high ({self.clamp_high})")
        return self


@dataclass(frozen=True)
class Comparison:
    """One question for the feedback model: which of two answers to a conversation is better."""

    conversation: list[Message]
    a: str
    b: str
    principles: list[ComparisonPrinciple]
    demos: list[tuple[ComparisonDemo, ComparisonPrinciple]]


@dataclass(frozen=True)
class Judgement:
    """The feedback model's answer to one Comparison; `p_a` is the final label."""

    p_a: float
    p_a_first: float
    p_a_second: float | None
    logprobs: list[list[float]]
    cot: list[str] | None
    clamped: bool


@dataclass(frozen=True)
class Question:
    """One rendering of a comparison: one principle, one option order."""

    comparison: int
    principle: ComparisonPrinciple
    swapped: bool
    messages: list[Message]


def principle_pool(kind: str, constitution: Constitution, config: FeedbackConfig) -> list[ComparisonPrinciple]:
    """Harmlessness pairs are judged under the constitution, helpfulness pairs under the helpfulness questions."""
    if kind == "helpful":
        return [ComparisonPrinciple(id=f"helpful-{i}", comparison=q) for i, q in enumerate(config.helpful_principles)]
    return list(constitution.comparison)


def draw_comparison(
    rng: random.Random,
    conversation: list[Message],
    a: str,
    b: str,
    pool: Sequence[ComparisonPrinciple],
    constitution: Constitution,
    config: FeedbackConfig,
) -> Comparison:
    """k distinct principles from `pool` and the few-shot demonstrations, each with its own principle."""
    principles = rng.sample(list(pool), min(config.num_principles, len(pool)))
    demos = constitution.demonstrations.comparison
    chosen = rng.sample(demos, min(config.num_demonstrations, len(demos)))
    return Comparison(conversation, a, b, principles, [(d, rng.choice(constitution.comparison)) for d in chosen])


def pair_rng(seed: int, pair_id: str) -> random.Random:
    """A generator per pair, so draws do not depend on chunking or on what a resumed run skipped."""
    return random.Random(f"{seed}:{pair_id}:comparison")


def answer_choices(chat: bool) -> list[str]:
    """What is scored: a pretrained prompt already ends with the answer prefix; a chat turn starts with it."""
    if chat:
        return [f"{ANSWER_PREFIX} {label}" for label in OPTION_LABELS]
    return [f" {label}" for label in OPTION_LABELS]


def scoring_prompt(messages: list[Message], chat: bool, reasoning: str | None = None) -> Prompt:
    """The prompt whose continuation is scored, after the chain of thought when there is one."""
    if chat:
        if reasoning is None:
            return messages
        return [*messages, {"role": "assistant", "content": reasoning}, {"role": "user", "content": COT_FOLLOWUP}]
    start = render_transcript(messages)
    if reasoning is None:
        return f"{start} {ANSWER_PREFIX}"
    return f"{start} {COT_PREFIX} {reasoning}\n{ANSWER_PREFIX}"


def reasoning_prompt(messages: list[Message], chat: bool) -> Prompt:
    return messages if chat else f"{render_transcript(messages)} {COT_PREFIX}"


def parse_reasoning(text: str) -> str | None:
    """The reasoning before any answer the model wrote itself; None when there is no reasoning to speak of."""
    reasoning = text.split(ANSWER_PREFIX)[0].strip()
    return reasoning if len(reasoning.split()) >= MIN_REASONING_WORDS else None


def probability_first(logprobs: Sequence[float]) -> float:
    """P(first option) normalized over the two options: a two-way softmax, stable for very negative log-probs."""
    first, second = logprobs
    return 1.0 / (1.0 + math.exp(min(second - first, 700.0)))


def render_questions(comparisons: Sequence[Comparison], config: FeedbackConfig) -> list[Question]:
    """Every question the config asks of each comparison: per drawn principle, per option order."""
    questions = []
    for index, comparison in enumerate(comparisons):
        prefix = comparison_demonstration_turns([(demo, p.comparison) for demo, p in comparison.demos])
        orders = (False, True) if config.debias else (False,)
        for principle in comparison.principles:
            for swapped in orders:
                first, second = (comparison.b, comparison.a) if swapped else (comparison.a, comparison.b)
                messages = comparison_messages(
                    prefix, comparison.conversation, first, second, principle.comparison, config.cot
                )
                questions.append(Question(index, principle, swapped, messages))
    return questions


def judge(model: LanguageModel, comparisons: Sequence[Comparison], config: FeedbackConfig) -> list[Judgement | str]:
    """Label comparisons with one batched call per step; a comparison whose CoT cannot be used gets the reason."""
    chat = uses_chat(model)
    questions = render_questions(comparisons, config)
    reasonings: list[str | None] = [None] * len(questions)
    rejected: dict[int, str] = {}
    if config.cot:
        params = config.cot_sampling.model_copy(update={"stop": [*config.cot_sampling.stop, ANSWER_PREFIX]})
        texts = model.generate([reasoning_prompt(q.messages, chat) for q in questions], params)
        for i, (question, text) in enumerate(zip(questions, texts, strict=True)):
            reasonings[i] = parse_reasoning(text)
            if reasonings[i] is None:
                order = "swapped order" if question.swapped else "given order"
                rejected.setdefault(
                    question.comparison,
                    f"chain of thought under '{question.principle.id}' ({order}) has fewer than "
                    f"{MIN_REASONING_WORDS} words of reasoning: {text.strip()[:80]!r}",
                )
    kept = [i for i, q in enumerate(questions) if q.comparison not in rejected]
    prompts = [scoring_prompt(questions[i].messages, chat, reasonings[i]) for i in kept]
    scores = model.choice_logprobs(prompts, answer_choices(chat)) if prompts else []
    by_comparison: dict[int, list[tuple[Question, list[float], str | None]]] = {}
    for i, logprobs in zip(kept, scores, strict=True):
        by_comparison.setdefault(questions[i].comparison, []).append((questions[i], logprobs, reasonings[i]))
    return [
        rejected[index] if index in rejected else _combine(by_comparison[index], config)
        for index in range(len(comparisons))
    ]


def _combine(scored: list[tuple[Question, list[float], str | None]], config: FeedbackConfig) -> Judgement:
    """Average over principles per order, then over orders; in CoT mode each probability is clamped first."""
    clamped = False
    per_order: dict[bool, list[float]] = {False: [], True: []}
    for question, logprobs, _ in scored:
        p = probability_first(logprobs)
        if config.cot and config.clamp:
            bounded = min(max(p, config.clamp_low), config.clamp_high)
            clamped |= bounded != p
            p = bounded
        per_order[question.swapped].append(1.0 - p if question.swapped else p)
    p_first = float(np.mean(per_order[False]))
    p_second = float(np.mean(per_order[True])) if per_order[True] else None
    return Judgement(
        p_a=p_first if p_second is None else (p_first + p_second) / 2,
        p_a_first=p_first,
        p_a_second=p_second,
        logprobs=[logprobs for _, logprobs, _ in scored],
        cot=[reasoning for _, _, reasoning in scored] if config.cot else None,
        clamped=clamped,
    )
