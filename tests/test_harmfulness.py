"""Absolute harmfulness: the judge's expected 0-4 rating, and the preference model read from its folder."""

from __future__ import annotations

import math

import pytest

from constitutional.evaluate.harmfulness import rubric_ratings
from constitutional.evaluate.judge import expected_rating
from constitutional.prompts import HARMFULNESS_RUBRIC
from constitutional.reward import PreferenceModel

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


def test_a_preference_model_without_a_pad_token_pads_with_its_end_token(tiny_pm_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    # Many causal LMs ship without a pad token; scoring a batch of different lengths must still work.
    directory = tmp_path / "no-pad"
    tokenizer = AutoTokenizer.from_pretrained(tiny_pm_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    config = AutoConfig.from_pretrained(tiny_pm_dir)
    config.pad_token_id = None
    config.save_pretrained(directory)
    (directory / "model.safetensors").write_bytes((tiny_pm_dir / "model.safetensors").read_bytes())
    model = PreferenceModel(directory, batch_size=2)
    assert model.tokenizer.pad_token == model.tokenizer.eos_token
    assert model.model.config.pad_token_id == model.tokenizer.eos_token_id
    conversations = [[{"role": "user", "content": "How do I bake bread?"}]] * 2
    batched = model.score(conversations, ["Knead and bake.", "Mix flour, water, salt and yeast, then knead."])
    single = PreferenceModel(directory, batch_size=1).score(
        conversations, ["Knead and bake.", "Mix flour, water, salt and yeast, then knead."]
    )
    assert batched == pytest.approx(single, abs=1e-4)
