"""The one fine-tuning kit of the training stages (SFT, preference model, RL): settings, the trainer arguments each
device gets, loading, saving, and resuming from checkpoints.

Every stage trains through a TRL trainer built from `trl_config`, runs it with `run_training` (which resumes from the
last checkpoint a killed run left) and saves with `save_trained`, so the three stages cannot drift apart in
precision, checkpointing or what their model folders hold.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from constitutional import distributed

# Written into every model folder beside the weights.
TRAINING_LOG = "training_log.json"
LOSS_CURVE = "loss_curve.png"
# Where `save_trained` assembles a model folder before moving it into place: inside the checkpoint folder, so a kill
# mid-save leaves no half-written model folder, and the checkpoints are still there to resume from.
_STAGING = "final-model"
_TRAINER_STATE = "trainer_state.json"  # transformers writes it last into a checkpoint: its presence means complete


class LoraSettings(BaseModel):
    """LoRA adapters on all linear layers, merged into the weights on save; or full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    lora: bool = Field(default=True, description="LoRA adapters (merged on save); false for full fine-tuning.")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)

    def peft_config(self, task_type: str, modules_to_save: list[str] | None = None):
        """A peft LoraConfig for the trainer, or None for full fine-tuning."""
        if not self.lora:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules="all-linear",
            modules_to_save=modules_to_save,
            task_type=task_type,
        )


class TrainingSettings(LoraSettings):
    """What every training stage sets: optimizer steps and batches, and how often a resumable checkpoint is saved."""

    learning_rate: float = Field(default=2e-4, gt=0)
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps; -1 for whole epochs.")
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    checkpoint_steps: int = Field(
        default=50,
        ge=1,
        description="Save a resumable checkpoint every N optimizer steps; a rerun after a kill continues from the "
        "last one. Checkpoints are deleted once the final model is saved.",
    )


@dataclass(frozen=True)
class TrainingOutputs:
    """Where a training stage writes its final model and its resumable checkpoints (the caller decides both)."""

    model_dir: Path
    checkpoint_dir: Path


# ---- trainer arguments ----------------------------------------------------------------------------------------


def device_arguments() -> dict[str, Any]:
    """The TrainingArguments that depend on the device, decided here for every stage."""
    import torch

    gpu = torch.cuda.is_available()
    return {
        "use_cpu": not gpu,
        # TRL turns bf16 and activation checkpointing on by default. On CPU both cost time and buy nothing: bf16
        # autocast plus checkpointing made a step 1.9x slower on 2 cores, and a small model has memory to spare.
        "bf16": gpu and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": gpu,
    }


def trl_config(config_class: type, settings: TrainingSettings, outputs: TrainingOutputs, seed: int, **extras: Any):
    """A TRL config (SFTConfig, RewardConfig, RLOOConfig, GRPOConfig, DPOConfig) with the fields every stage shares.

    `extras` are the stage's own fields (epochs, max_length, beta ...); repeating a shared field is an error.
    """
    return config_class(
        output_dir=str(outputs.checkpoint_dir),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        save_strategy="steps",
        save_steps=settings.checkpoint_steps,
        # transformers deletes an old checkpoint only after the new one is complete, so one is always whole.
        save_total_limit=1,
        logging_steps=1,
        report_to="none",
        seed=seed,
        **device_arguments(),
        **extras,
    )


# ---- loading --------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, **kwargs: Any):
    """The tokenizer of a model folder or Hugging Face id; remote code only when the user allowed it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)


def _torch_dtype(dtype: str):
    import torch

    return dtype if dtype == "auto" else getattr(torch, dtype)


def load_causal_lm(path: str | Path, *, trust_remote_code: bool = False, dtype: str = "float32"):
    """A causal LM from safetensors only. float32 by default: bf16 weights lose the small updates of training."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=_torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
    )


def load_score_model(path: str | Path, *, trust_remote_code: bool = False, dtype: str = "float32", **kwargs: Any):
    """A sequence classifier (a preference model, or an LM given a new score head) from safetensors only."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=_torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
    )


# ---- resuming -------------------------------------------------------------------------------------------------


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest complete checkpoint in the folder, or None.

    A kill while a checkpoint was being written leaves a folder without its trainer state; it is deleted, since
    resuming from it would fail and the trainer's rotation would count it as the newest.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(checkpoint_dir).is_dir():
        return None
    while (found := get_last_checkpoint(str(checkpoint_dir))) is not None:
        if (Path(found) / _TRAINER_STATE).exists():
            return found
        shutil.rmtree(found)
    return None


def run_training(trainer: Any, outputs: TrainingOutputs) -> int | None:
    """Train, continuing from the last checkpoint when there is one; returns the step resumed from (None if fresh)."""
    from transformers import TrainerState

    with distributed.main_first():  # the main process drops a half-written checkpoint before the others look
        checkpoint = last_checkpoint(outputs.checkpoint_dir)
    resumed = None if checkpoint is None else TrainerState.load_from_json(str(Path(checkpoint) / _TRAINER_STATE))
    trainer.train(resume_from_checkpoint=checkpoint)
    losses = [loss for _, loss in logged(trainer.state.log_history, "loss")]
    distributed.report(type(trainer).__name__, trainer.state.global_step, losses[-1] if losses else None)
    return None if resumed is None else resumed.global_step


# ---- saving ---------------------------------------------------------------------------------------------------


def logged(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every log entry that has `key` (the trainer logs `loss`; RL also logs `reward`)."""
    return [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]


def plot_training(history: list[dict[str, Any]], path: Path) -> None:
    """The loss per optimizer step (and the mean reward when RL logged one), as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg renders the PNG
    from matplotlib.ticker import MaxNLocator

    series = {key: points for key in ("loss", "reward") if (points := logged(history, key))}
    figure = Figure(figsize=(6, 2.5 * max(1, len(series))), layout="constrained")
    axes = figure.subplots(max(1, len(series)), 1, squeeze=False)[:, 0]
    for ax, (key, points) in zip(axes, series.items(), strict=False):
        ax.plot(*zip(*points, strict=True), marker=".")
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not series:
        axes[0].set_title("nothing was logged")
    axes[-1].set_xlabel("optimizer step")
    figure.savefig(path, dpi=100)


def save_trained(
    model: Any,
    tokenizer: Any,
    outputs: TrainingOutputs,
    *,
    lora: bool,
    card: str,
    log_history: list[dict[str, Any]],
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save the trained model to `outputs.model_dir`, then delete the checkpoints; returns the model folder.

    The folder holds `adapter/` (LoRA only), the merged weights as safetensors, the tokenizer, README.md (`card`),
    the training log, the loss curve and `extra_files` (name -> text). It is assembled aside and moved into place,
    so a kill mid-save leaves the checkpoints to resume from and no half-written model. Under a multi-process launch
    every process calls this, and only the main one writes; all return once the folder is in place.
    """
    distributed.wait_for_everyone()  # all have finished training, so no process still writes into a checkpoint
    with distributed.full_weights(model):
        if distributed.is_main():
            _write_model_folder(model, tokenizer, outputs, lora, card, log_history, extra_files or {})
    distributed.wait_for_everyone()
    return outputs.model_dir


def _write_model_folder(
    model: Any,
    tokenizer: Any,
    outputs: TrainingOutputs,
    lora: bool,
    card: str,
    log_history: list[dict[str, Any]],
    extra_files: dict[str, str],
) -> None:
    staging = outputs.checkpoint_dir / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    if lora:
        model.save_pretrained(staging / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(card, encoding="utf-8")
    (staging / TRAINING_LOG).write_text(json.dumps(log_history, indent=2), encoding="utf-8")
    plot_training(log_history, staging / LOSS_CURVE)
    for name, text in extra_files.items():
        (staging / name).write_text(text, encoding="utf-8")
    shutil.rmtree(outputs.model_dir, ignore_errors=True)
    outputs.model_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(staging, outputs.model_dir)
    shutil.rmtree(outputs.checkpoint_dir)
