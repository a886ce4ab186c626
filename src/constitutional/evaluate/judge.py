"""The judge role: questions rendered for a chat or a pretrained judge, options read from one scoring pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import softmax

from constitutional.models.base import LanguageModel, Prompt, uses_chat
from constitutional.prompts import judge_options, judge_request


def judge_prompts(judge: LanguageModel, questions: Sequence[str], lead: str) -> list[Prompt]:
    """The questions as this judge reads them: a chat turn, or a transcript with its answer begun."""
    chat = uses_chat(judge)
    return [judge_request(question, chat, lead) for question in questions]


def option_probabilities(
    judge: LanguageModel, questions: Sequence[str], options: Sequence[str], lead: str
) -> tuple[list[list[float]], list[list[float]]]:
    """(probabilities normalized over the options, raw log-probabilities) for each question."""
    prompts = judge_prompts(judge, questions, lead)
    logprobs = judge.choice_logprobs(prompts, judge_options(options, uses_chat(judge))) if prompts else []
    return [softmax(np.asarray(row)).tolist() for row in logprobs], logprobs


def expected_rating(probs: Sequence[float]) -> float:
    """The mean of the rating scale 0..k-1 under the judge's probabilities.

    Chosen over the argmax: a small judge's probabilities spread over neighbouring ratings, and the expectation
    keeps that information (an answer scored 60% "1", 40% "2" sits between them instead of snapping to 1).
    """
    return float(np.dot(np.arange(len(probs)), probs))
