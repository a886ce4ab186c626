"""SFT on revisions: TRL's SFTTrainer moves the weights, saves safetensors and a model card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from constitutional.errors import InputError
from constitutional.finetuning import TrainingOutputs
from constitutional.models.spec import ModelSpec
from constitutional.records import RevisionStep, SLRecord
from constitutional.sl_train import SLTrainConfig, sft_examples, train


def _record(i: int, kind: str) -> SLRecord:
    steps = []
    if kind == "red_team":
        steps = [
            RevisionStep(principle="general-harm", critique="too risky", revision=f"first fix {i}"),
            RevisionStep(principle="evasive-refusal", critique=None, revision=f"I can't help with that, but {i}"),
        ]
    return SLRecord(
        id=f"{kind}-{i}",
        kind=kind,
        prompt=[{"role": "user", "content": f"question {i}"}],
        initial=f"answer {i}",
        steps=steps,
        constitution="harmless@1.0",
        model="m",
        params={},
        seed=0,
    )


RECORDS = [_record(i, "red_team") for i in range(6)] + [_record(i, "helpful") for i in range(10)]


def test_sft_examples_final_or_all_revisions_and_helpful_ratio():
    final = sft_examples(RECORDS, "final", helpful_ratio=0.5, seed=0)
    assert sum(r["kind"] == "red_team" for r in final) == 6 and sum(r["kind"] == "helpful" for r in final) == 3
    assert all(r["messages"][-1]["content"].startswith("I can't help") for r in final if r["kind"] == "red_team")
    every = sft_examples(RECORDS, "all", helpful_ratio=0.0, seed=0)
    assert len(every) == 12
    assert every[0]["messages"] == [
        {"role": "user", "content": "question 0"},
        {"role": "assistant", "content": "first fix 0"},
    ]


def test_empty_revisions_are_not_trained_on():
    record = _record(0, "red_team")
    record.steps[-1].revision = "   "
    assert sft_examples([record], "final", 0.0, seed=0) == []


def outputs(directory: Path) -> TrainingOutputs:
    return TrainingOutputs(model_dir=directory / "model", checkpoint_dir=directory / "stage" / "checkpoints")


@pytest.mark.parametrize(("lora", "fixture"), [(True, "tiny_model_path"), (False, "tiny_base_model_path")])
def test_training_moves_the_weights_and_saves_safetensors(tmp_path, request, lora, fixture):
    base = request.getfixturevalue(fixture)
    before = load_file(base / "model.safetensors")
    config = SLTrainConfig(lora=lora, max_steps=4, batch_size=4, learning_rate=5e-3, max_length=64)
    summary = train(RECORDS, ModelSpec(name=str(base)), config, seed=0, outputs=outputs(tmp_path))
    output = Path(summary["model_dir"])
    assert output == tmp_path / "model"
    after = load_file(output / "model.safetensors")
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert moved, "no parameter changed"
    assert summary["steps"] == 4 and summary["resumed_from_step"] is None
    assert summary["last_loss"] < summary["first_loss"]
    card = (output / "README.md").read_text()
    assert "harmless@1.0" in card and str(base) in card
    assert (output / "adapter" / "adapter_model.safetensors").exists() == lora


def test_training_without_records_says_what_to_run(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match="cai sl generate"):
        train([], ModelSpec(name=str(tiny_model_path)), SLTrainConfig(max_steps=1), seed=0, outputs=outputs(tmp_path))
    assert not (tmp_path / "model").exists()
