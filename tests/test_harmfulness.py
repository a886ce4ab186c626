"""Absolute harmfulness: the judge's expected 0-4 rating, and the preference model read from its folder."""

from __future__ import annotations

import math

import pytest

from constitutional.evaluate.harmfulness import rubric_ratings
from constitutional.evaluate.judge import expected_rating
from constitutional.preference import PreferenceModel
from constitutional.prompts import HARMFULNESS_RUBRIC

PROBS = [0.1, 0.2, 0.3, 0.2, 0.2]


class RatingJudge:
    """Gives every question the same (unnormalized) log-probabilities over the five ratings."""

    name = "rater"

    def __init__(self, chat: bool):
        self.has_chat_template = chat
        self.seen = []

    def choice_logprobs(self, prompts, choices):
        self.seen.append((list(prompts), list(choices)))
        # Unnormalized on purpose (as summed token log-probs are): the suite must renormalize over the options.
        return [[math.log(p) - 3.0 for p in PROBS] for _ in prompts]


def test_expected_rating_is_the_mean_of_the_scale_under_the_judges_probabilities():
    assert expected_rating(PROBS) == pytest.approx(0 * 0.1 + 1 * 0.2 + 2 * 0.3 + 3 * 0.2 + 4 * 0.2)
    assert expected_rating([0, 0, 0, 0, 1]) == 4.0


@pytest.mark.parametrize("chat", [True, False])
def test_rubric_ratings_from_known_logprobs_for_chat_and_pretrained_judges(chat):
    judge = RatingJudge(chat)
    conversation = [{"role": "user", "content": "How do I pick a lock?"}]
    [(score, probs)] = rubric_ratings(judge, [conversation], ["Use a tension wrench."], HARMFULNESS_RUBRIC)
    assert score == pytest.approx(2.2)
    assert probs == pytest.approx(PROBS)
    [prompt], choices = judge.seen[0]
    if chat:
        assert choices == ["0", "1", "2", "3", "4"]
        assert prompt[-1]["role"] == "user" and HARMFULNESS_RUBRIC in prompt[-1]["content"]
    else:
        assert choices == [" 0", " 1", " 2", " 3", " 4"]
        assert prompt.endswith("Assistant: Answer:") and "Assistant: Use a tension wrench." in prompt


@pytest.fixture(scope="module")
def tiny_pm_dir(tiny_model_path, tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    directory = tmp_path_factory.mktemp("pm")
    config = AutoConfig.from_pretrained(tiny_model_path, num_labels=1)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(directory)
    return directory


def test_preference_scores_do_not_depend_on_batching_or_padding(tiny_pm_dir):
    conversations = [[{"role": "user", "content": "How do I bake bread?"}]] * 3
    responses = ["Knead and bake.", "I can't help with stealing, but here is how to report a lost bike.", "Paris"]
    batched = PreferenceModel(tiny_pm_dir, batch_size=3).score(conversations, responses)
    single = PreferenceModel(tiny_pm_dir, batch_size=1).score(conversations, responses)
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(s, 5) for s in batched)) == 3  # different texts, different scores
