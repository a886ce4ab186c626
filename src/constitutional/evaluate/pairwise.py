"""Pairwise comparisons by the judge under one criterion, in both presentation orders (position-debiased)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from constitutional.evaluate.judge import option_probabilities
from constitutional.models.base import LanguageModel, Message
from constitutional.prompts import JUDGE_PAIRWISE_LEAD, PAIRWISE_OPTIONS, judge_pairwise_question


@dataclass(frozen=True)
class Verdict:
    p_a: float  # mean of both orders
    p_a_first: float
    p_a_second: float
    logprobs: list[list[float]]  # [[log p(A), log p(B)] a first, [...] a second]


def compare(
    judge: LanguageModel,
    conversations: Sequence[list[Message]],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    criterion: str,
) -> list[Verdict]:
    """P(a better than b) per item: a shown as (A), then as (B); a judge's taste for one position cancels out."""
    questions = []
    for conversation, a, b in zip(conversations, answers_a, answers_b, strict=True):
        questions += [
            judge_pairwise_question(conversation, a, b, criterion),
            judge_pairwise_question(conversation, b, a, criterion),
        ]
    probs, logprobs = option_probabilities(judge, questions, PAIRWISE_OPTIONS, JUDGE_PAIRWISE_LEAD)
    verdicts = []
    for k in range(0, len(probs), 2):
        first, second = probs[k][0], probs[k + 1][1]
        verdicts.append(Verdict((first + second) / 2, first, second, [logprobs[k], logprobs[k + 1]]))
    return verdicts
