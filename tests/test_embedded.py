"""The embedded weights for real (slow: converted once, then loaded in seconds): formats, scoring, SL-CAI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.models.base import render_transcript
from constitutional.models.embedded import resolve

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_new_tokens=16, temperature=0)
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm():
    return load_model(ModelSpec(name="smollm2-135m-instruct", batch_size=4))


def test_embedded_names_resolve_to_a_safetensors_cache_with_or_without_chat_template():
    for name, chat in (("smollm2-135m-instruct", True), ("gemma3-270m", False)):
        path = Path(resolve(name))
        assert (path / "model.safetensors").exists() and (path / "config.json").exists()
        config = json.loads((path / "config.json").read_text())
        assert "quantization_config" not in config
        assert (
            (path / "chat_template.jinja").exists() or "chat_template" in (path / "tokenizer_config.json").read_text()
        ) == chat


def test_greedy_generation_is_deterministic_and_non_empty(smollm):
    prompts = [[{"role": "user", "content": "Name a fruit."}], "\n\nHuman: What colour is the sky?\n\nAssistant:"]
    first = smollm.generate(prompts, GREEDY)
    again = smollm.generate(list(reversed(prompts)), GREEDY)
    assert first == list(reversed(again))
    assert len(first) == 2 and all(answer.strip() for answer in first)
    assert "Human:" not in first[1]  # the transcript's next turn is a stop sequence


def test_choice_logprobs_are_log_probabilities_that_tell_choices_apart(smollm):
    [[paris, banana]] = smollm.choice_logprobs(["The capital of France is"], [" Paris", " banana"])
    assert math.isfinite(paris) and math.isfinite(banana)
    # Two different continuations of one prompt: each a log-probability, their probabilities summing to <= 1.
    assert paris < 0 and banana < 0 and math.exp(paris) + math.exp(banana) <= 1 + 1e-6
    assert paris > banana + 1.0  # and the model knows which is right, by a wide margin
    [[banana_again, paris_again]] = smollm.choice_logprobs(["The capital of France is"], [" banana", " Paris"])
    assert paris_again == pytest.approx(paris, abs=0.05) and banana_again == pytest.approx(banana, abs=0.05)
    # Option labels share their first tokens: the shared part is scored once, the tails apart.
    [[a, b]] = smollm.choice_logprobs(["Which is a fruit? (A) an apple (B) a hammer\nAnswer:"], [" (A)", " (B)"])
    assert a < 0 and b < 0 and math.exp(a) + math.exp(b) <= 1 + 1e-6 and a != b


def test_the_chat_model_answers_in_its_chat_templates_assistant_turn(smollm):
    rendered = smollm.tokenizer.apply_chat_template(FRANCE, tokenize=False, add_generation_prompt=True)
    assert rendered.rstrip().endswith("assistant")  # the template opens the assistant's turn
    # Messages are read as the chat template's text with its special tokens (text given as a string is not: its
    # "<|im_start|>" stays characters), and answered otherwise than the Human/Assistant transcript a pretrained
    # model would get.
    assert smollm.render(FRANCE) == smollm.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    via_messages, via_transcript = smollm.generate([FRANCE, render_transcript(FRANCE)], GREEDY)
    assert via_messages != via_transcript
    assert "Paris" in via_messages


def test_pretrained_base_model_follows_the_transcript_format():
    gemma = load_model(ModelSpec(name="gemma3-270m", batch_size=2))
    [answer] = gemma.generate([FRANCE], SamplingParams(max_new_tokens=12, temperature=0, repetition_penalty=1.0))
    assert "Paris" in answer and "Human:" not in answer


def test_sl_generate_then_train_on_the_real_policy(tmp_path, smollm):
    import torch
    from safetensors.torch import load_file

    from constitutional import sl, sl_train
    from constitutional.constitution import load_constitution
    from constitutional.finetuning import TrainingOutputs
    from constitutional.recipe import DEMO_RECIPE, load_recipe
    from constitutional.records import SLRecord
    from constitutional.store import StageFolder

    recipe = load_recipe(DEMO_RECIPE)
    sampling = recipe.sl.sampling.model_copy(update={"max_new_tokens": 24})
    config = recipe.sl.model_copy(update={"max_prompts": 2, "num_revisions": 1, "sampling": sampling})
    stage = StageFolder(tmp_path / "sl_generate")
    summary = sl.generate(stage, smollm, load_constitution(recipe.constitution), config, seed=0)
    records = stage.records(SLRecord)
    assert summary == {"records": 4, "rejected": 0} and len(records) == 4
    assert sorted(r.kind for r in records) == ["helpful", "helpful", "red_team", "red_team"]
    for red in (r for r in records if r.kind == "red_team"):
        assert red.model == "smollm2-135m-instruct" and red.initial.strip()
        assert len(red.steps) == 1 and red.steps[0].critique.strip() and red.final.strip()

    outputs = TrainingOutputs(model_dir=tmp_path / "sl_model", checkpoint_dir=tmp_path / "checkpoints")
    train_config = recipe.sl_train.model_copy(update={"max_steps": 2, "batch_size": 2})
    result = sl_train.train(records, ModelSpec(name="smollm2-135m-instruct"), train_config, 0, outputs)
    assert result["steps"] == 2 and result["resumed_from_step"] is None
    assert math.isfinite(result["first_loss"]) and math.isfinite(result["last_loss"])
    assert Path(result["model_dir"]) == outputs.model_dir and not outputs.checkpoint_dir.exists()

    # LoRA on the linear layers, merged on save: attention weights moved, the embeddings did not.
    base = load_file(Path(resolve("smollm2-135m-instruct")) / "model.safetensors")
    tuned = load_file(outputs.model_dir / "model.safetensors")
    moved = {k for k in base if k in tuned and not torch.equal(base[k].float(), tuned[k].float())}
    assert any("q_proj" in k for k in moved)
    assert not any("embed_tokens" in k for k in moved)
    policy = load_model(ModelSpec(name=str(outputs.model_dir), batch_size=1))
    [answer] = policy.generate([[{"role": "user", "content": "Hi!"}]], SamplingParams(max_new_tokens=8, temperature=0))
    assert answer.strip()


def test_two_processes_converting_at_once_both_get_one_complete_model(tmp_path):
    env = {**os.environ, "CONSTITUTIONAL_CACHE": str(tmp_path)}
    code = "from constitutional.models.embedded import resolve; print(resolve('smollm2-135m-instruct'))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for _ in range(2)
    ]
    paths = {process.communicate(timeout=300)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    [path] = paths
    assert (Path(path) / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m-instruct"
    ]
