"""The whole SL-CAI path on the real embedded weights (slow: they convert once, then load in seconds)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constitutional.cli import app
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.models.embedded import resolve

pytestmark = pytest.mark.slow


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


def test_real_policy_generates_and_scores_choices(smollm):
    answers = smollm.generate(
        [[{"role": "user", "content": "Name a fruit."}], "\n\nHuman: What colour is the sky?\n\nAssistant:"],
        SamplingParams(max_new_tokens=16, temperature=0),
    )
    assert len(answers) == 2 and all(answer.strip() for answer in answers)
    assert "Human:" not in answers[1]
    [[paris, banana]] = smollm.choice_logprobs(["The capital of France is"], [" Paris", " banana"])
    assert math.isfinite(paris) and paris > banana


def test_pretrained_base_model_follows_the_transcript_format():
    gemma = load_model(ModelSpec(name="gemma3-270m", batch_size=2))
    [answer] = gemma.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        SamplingParams(max_new_tokens=12, temperature=0, repetition_penalty=1.0),
    )
    assert "Paris" in answer and "Human:" not in answer


def test_sl_generate_then_train_on_the_real_policy(tmp_path):
    runner = CliRunner()
    run = ["--run-dir", str(tmp_path / "run")]
    generated = runner.invoke(
        app,
        [
            "sl",
            "generate",
            "--config",
            "recipes/demo.yaml",
            *run,
            "--max-prompts",
            "2",
            "--num-revisions",
            "1",
            "--sampling.max-new-tokens",
            "24",
        ],
    )
    assert generated.exit_code == 0, generated.output
    shard = next((tmp_path / "run" / "sl_generate").glob("part-*.jsonl"))
    records = [json.loads(line) for line in shard.read_text().splitlines()]
    assert {r["kind"] for r in records} == {"red_team", "helpful"} and len(records) == 4
    red = next(r for r in records if r["kind"] == "red_team")
    assert red["model"] == "smollm2-135m-instruct" and red["steps"][0]["critique"] and red["initial"]
    trained = runner.invoke(app, ["sl", "train", "--config", "recipes/demo.yaml", *run, "--max-steps", "2"])
    assert trained.exit_code == 0, trained.output
    policy = load_model(ModelSpec(name=str(tmp_path / "run" / "sl_model"), batch_size=1))
    [answer] = policy.generate([[{"role": "user", "content": "Hi!"}]], SamplingParams(max_new_tokens=8))
    assert isinstance(answer, str)


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
