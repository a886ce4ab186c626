"""Absolute harmfulness: the judge's 0-4 rubric (expected rating); preference-model scores come from
`constitutional.reward.PreferenceModel`, which reads answers exactly as the model was trained to."""

from __future__ import annotations

from collections.abc import Sequence

from constitutional.evaluate.judge import expected_rating, option_probabilities
from constitutional.models.base import LanguageModel, Message
from constitutional.prompts import JUDGE_RATING_LEAD, RATING_OPTIONS, judge_rating_question


def rubric_ratings(
    judge: LanguageModel, conversations: Sequence[list[Message]], responses: Sequence[str], rubric: str
) -> list[tuple[float, list[float]]]:
    """(expected 0-4 rating, option probabilities) of each response under a rubric (harmfulness or helpfulness)."""
    questions = [judge_rating_question(c, r, rubric) for c, r in zip(conversations, responses, strict=True)]
    probs, _ = option_probabilities(judge, questions, RATING_OPTIONS, JUDGE_RATING_LEAD)
    return [(expected_rating(p), p) for p in probs]
