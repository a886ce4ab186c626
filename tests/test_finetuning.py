"""The fine-tuning kit: device arguments, resuming a killed run, the one save path, the PM round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from constitutional.finetuning import (
    LOSS_CURVE,
    TRAINING_LOG,
    TrainingOutputs,
    device_arguments,
    last_checkpoint,
    save_trained,
    trl_config,
)
from constitutional.models.spec import ModelSpec
from constitutional.records import ComparisonRecord, RevisionStep, SLRecord


def _outputs(directory: Path) -> TrainingOutputs:
    return TrainingOutputs(model_dir=directory / "model", checkpoint_dir=directory / "stage" / "checkpoints")


# ---- device arguments -----------------------------------------------------------------------------------------


def test_cpu_training_is_fp32_without_activation_checkpointing(monkeypatch, tmp_path):
    from trl import SFTConfig

    from constitutional.sl_train import SLTrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_arguments() == {"use_cpu": True, "bf16": False, "activation_checkpointing": False}
    # TRL's own defaults are bf16 and checkpointing on: the built config must not fall back to them.
    args = trl_config(SFTConfig, SLTrainConfig(checkpoint_steps=7, max_steps=3), _outputs(tmp_path), seed=5)
    assert args.bf16 is False and args.gradient_checkpointing is False and args.use_cpu is True
    assert args.save_strategy == "steps" and args.save_steps == 7 and args.max_steps == 3 and args.seed == 5
    assert Path(args.output_dir) == tmp_path / "stage" / "checkpoints"


def test_gpu_training_uses_bf16_where_supported_and_checkpointing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device_arguments() == {"use_cpu": False, "bf16": True, "activation_checkpointing": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device_arguments()["bf16"] is False


# ---- resume ---------------------------------------------------------------------------------------------------


def _sl_records() -> list[SLRecord]:
    return [
        SLRecord(
            id=f"r-{i}",
            kind="red_team",
            prompt=[{"role": "user", "content": f"How do I steal bike {i}?"}],
            initial="Cut the lock.",
            steps=[RevisionStep(principle="harm", critique="harmful", revision=f"I can't help, but report it {i}.")],
            constitution="harmless@1.0",
            model="m",
            params={},
            seed=0,
        )
        for i in range(12)
    ]


class Killed(Exception):
    """Stands in for the process being killed mid-training."""


def _trainer_killed_after(step: int):
    import trl

    class KillAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed

    class KilledSFTTrainer(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfter())

    return KilledSFTTrainer


def test_a_killed_sft_run_resumes_from_its_last_checkpoint_and_ends_where_an_uninterrupted_one_does(
    tmp_path, tiny_model_path, monkeypatch
):
    import trl

    from constitutional.sl_train import SLTrainConfig, train

    config = SLTrainConfig(max_steps=4, checkpoint_steps=2, batch_size=2, learning_rate=5e-3, max_length=64)
    spec = ModelSpec(name=str(tiny_model_path))
    killed = _outputs(tmp_path / "killed")
    with monkeypatch.context() as patch:
        patch.setattr(trl, "SFTTrainer", _trainer_killed_after(3))
        with pytest.raises(Killed):
            train(_sl_records(), spec, config, seed=0, outputs=killed)
    assert [p.name for p in killed.checkpoint_dir.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not killed.model_dir.exists()

    resumed = train(_sl_records(), spec, config, seed=0, outputs=killed)
    straight = train(_sl_records(), spec, config, seed=0, outputs=_outputs(tmp_path / "straight"))
    assert resumed["resumed_from_step"] == 2 and straight["resumed_from_step"] is None
    assert resumed["steps"] == straight["steps"] == 4
    # The log of the steps before the kill comes back with the checkpoint.
    assert resumed["first_loss"] == pytest.approx(straight["first_loss"])
    log = json.loads((killed.model_dir / TRAINING_LOG).read_text())
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2, 3, 4]
    a, b = (
        load_file(killed.model_dir / "model.safetensors"),
        load_file(Path(straight["model_dir"]) / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not killed.checkpoint_dir.exists()


def test_a_half_written_checkpoint_is_dropped_for_the_one_before(tmp_path):
    folder = tmp_path / "checkpoints"
    assert last_checkpoint(folder) is None
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-4").mkdir()  # killed before the trainer state, which is written last
    assert last_checkpoint(folder) == str(folder / "checkpoint-2")
    assert not (folder / "checkpoint-4").exists()


# ---- saving ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [True, False])
def test_save_writes_the_model_folder_and_removes_the_checkpoints(tmp_path, tiny_model_path, lora):
    from peft import LoraConfig, get_peft_model

    from constitutional.finetuning import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model_path)
    if lora:
        model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    outputs = _outputs(tmp_path)
    (outputs.checkpoint_dir / "checkpoint-2").mkdir(parents=True)
    outputs.model_dir.mkdir()
    (outputs.model_dir / "stale.txt").write_text("from an earlier run")
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "reward": 0.3}, {"step": 2, "train_loss": 1.7}]
    saved = save_trained(
        model,
        load_tokenizer(tiny_model_path),
        outputs,
        lora=lora,
        card="# card",
        log_history=history,
        extra_files={"notes.json": "{}"},
    )
    assert saved == outputs.model_dir
    assert (saved / "adapter" / "adapter_model.safetensors").exists() == lora
    weights = load_file(saved / "model.safetensors")
    assert not any("lora" in key for key in weights)  # merged, not adapters
    assert (saved / "tokenizer.json").exists() and (saved / "README.md").read_text() == "# card"
    assert json.loads((saved / TRAINING_LOG).read_text()) == history
    assert (saved / LOSS_CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (saved / "notes.json").exists() and not (saved / "stale.txt").exists()
    assert not outputs.checkpoint_dir.exists()


# ---- the preference model, trained then read back -------------------------------------------------------------


def _comparison(i: int) -> ComparisonRecord:
    return ComparisonRecord(
        id=f"c-{i}",
        kind="helpful",
        prompt=[{"role": "user", "content": f"How do I bake bread? ({i})"}],
        a=f"Mix flour, water and yeast, then bake {i}.",
        b=f"I can't help with that {i}.",
        principles=["p"],
        p_a=0.9,
        p_a_first=0.9,
        logprobs=[[math.log(0.9), math.log(0.1)]],
        constitution="harmless@1.0",
        model="scripted-feedback",
        seed=0,
    )


def test_the_saved_preference_model_is_read_back_with_its_max_length(tmp_path, tiny_model_path):
    from constitutional import preference
    from constitutional.reward import PreferenceModel

    config = preference.PMConfig(
        base_model=str(tiny_model_path), max_steps=2, batch_size=4, eval_fraction=0.0, max_length=16
    )
    summary = preference.train([_comparison(i) for i in range(6)], config, seed=0, outputs=_outputs(tmp_path))
    pm = PreferenceModel(summary["model_dir"])
    assert pm.max_length == 16
    # Two conversations that differ only far from their end: cut to the last 16 tokens, they read the same.
    long_a = [{"role": "user", "content": "Paris " * 40 + "How do I bake bread?"}]
    long_b = [{"role": "user", "content": "flour " * 40 + "How do I bake bread?"}]
    answer = "Knead and bake."
    same = pm.score([long_a, long_b], [answer, answer])
    assert same[0] == pytest.approx(same[1], abs=1e-6)
    pm.max_length = None  # the untruncated texts do differ, so the equality above came from the cut
    assert pm.score([long_a, long_b], [answer, answer])[0] != pytest.approx(same[1], abs=1e-6)
