"""The preference model: a scalar head on a small LM, trained on the feedback model's soft labels.

Training goes through TRL's RewardTrainer with one change: the loss is the cross-entropy between the soft label
p = P(chosen is better) and sigmoid(r_chosen - r_rejected), which is Bradley-Terry's loss when p = 1. A seeded
share of the pairs is held out to measure pairwise accuracy and calibration, as the paper reports for its PMs.

Sequences are tokenized here with `reward.encode` (not by the trainer), and the settings are saved beside the model,
so that `reward.PreferenceModel` reads exactly the tokens the model was trained on.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from constitutional.calibration import calibrate
from constitutional.errors import InputError
from constitutional.finetuning import (
    TrainingOutputs,
    TrainingSettings,
    load_score_model,
    load_tokenizer,
    run_training,
    save_trained,
    trl_config,
)
from constitutional.jsonl import read_json_lines
from constitutional.records import ComparisonRecord, KindAccuracy, PMMetrics
from constitutional.reward import SETTINGS_FILE, as_conversation, encode, rewards, with_pad_token

METRICS_FILE = "metrics.json"  # beside the model, as records.PMMetrics
_KINDS = ("red_team", "helpful")


class PMConfig(TrainingSettings):
    """Training the preference model on soft labels."""

    base_model: str = Field(
        default="smollm2-135m-instruct",
        description="LM under the score head: embedded name, Hugging Face id or local path.",
    )
    preference_data: str | None = Field(
        default=None,
        description="JSONL of {prompt, chosen, rejected, p_chosen} to train on instead of the run's rl_label "
        "comparisons; null uses the run's.",
    )
    harmless_share: float | None = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of red-team pairs among training pairs (the larger side is subsampled); null keeps all. "
        "Too much harmlessness data teaches the assistant to apologise to 'hey'.",
    )
    eval_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="Seeded share of pairs held out for accuracy and calibration."
    )
    calibration_bins: int = Field(default=10, ge=2, description="Equal-width bins of the reliability diagram.")
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, ge=1, description="Pairs per step (each pair is two sequences).")
    max_length: int = Field(
        default=384, ge=16, description="Tokens per sequence; longer ones lose their start (the answer is kept)."
    )


# ---- the loss -------------------------------------------------------------------------------------------------


def soft_preference_loss(chosen: Any, rejected: Any, p_chosen: Any) -> Any:
    """-(p log s(r_c - r_r) + (1 - p) log s(r_r - r_c)), averaged: binary cross-entropy on the reward margin."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(chosen - rejected, p_chosen.to(chosen.dtype))


def _soft_label_trainer():
    """RewardTrainer with the soft-label loss; built lazily so importing this module does not import TRL."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        """TRL's preference collator, carrying each pair's soft label along."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().torch_call(examples)
            batch["p_chosen"] = torch.tensor([example["p_chosen"] for example in examples], dtype=torch.float)
            return batch

    class SoftLabelRewardTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p_chosen = inputs.pop("p_chosen")
            # The parent does the forward pass and logs rewards/accuracy; only its hard-label loss is replaced.
            _, outputs = super().compute_loss(model, inputs, return_outputs=True)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_preference_loss(chosen, rejected, p_chosen)
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer, SoftLabelCollator


# ---- data -----------------------------------------------------------------------------------------------------


def _answer_text(value: Any) -> str | None:
    """An answer given as text or as TRL's conversational [{"role": "assistant", "content": ...}]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def load_preference_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows {id, kind, prompt, chosen, rejected, p_chosen} from a JSONL of TRL preference rows plus soft labels."""
    path = Path(path)
    rows = []
    for number, row in read_json_lines(path):

        def refuse(message: str, field: str, hint: str, number=number) -> InputError:
            return InputError(message, path=path, line=number, field=field, hint=hint)

        prompt = as_conversation(row.get("prompt"))
        if prompt is None:
            raise refuse("missing or not a prompt", "prompt", "give a string or a list of {role, content} messages")
        answers = {}
        for field in ("chosen", "rejected"):
            answers[field] = _answer_text(row.get(field))
            if answers[field] is None:
                raise refuse(f"missing or not an answer: {field}", field, "give a string or [{role, content}]")
        p = row.get("p_chosen")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise refuse(
                f"p_chosen must be a number in [0, 1], got {p!r}",
                "p_chosen",
                "give P(chosen is better); use 1.0 for a hard label",
            )
        kind = row.get("kind")
        if kind is not None and kind not in _KINDS:
            raise refuse(f"unknown kind {kind!r}", "kind", "use red_team, helpful, or leave it out")
        rows.append(
            {
                "id": str(row.get("id", f"line-{number}")),
                "kind": kind,
                "prompt": prompt,
                "chosen": answers["chosen"],
                "rejected": answers["rejected"],
                "p_chosen": float(p),
            }
        )
    if not rows:
        raise InputError("no preference rows", path=path, hint="one {prompt, chosen, rejected, p_chosen} per line")
    return rows


def comparison_rows(comparisons: Sequence[ComparisonRecord]) -> list[dict[str, Any]]:
    """ComparisonRecords as rows, through their TRL export (`preference_row`)."""
    rows = []
    for record in comparisons:
        row = record.preference_row()
        rows.append(row | {"chosen": row["chosen"][-1]["content"], "rejected": row["rejected"][-1]["content"]})
    return rows


def split(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded shuffle, so the held-out pairs do not depend on file order."""
    shuffled = list(rows)
    random.Random(f"{seed}:pm-split").shuffle(shuffled)
    held = math.floor(len(shuffled) * eval_fraction)
    return shuffled[held:], shuffled[:held]


def balance_kinds(rows: list[dict[str, Any]], harmless_share: float | None, seed: int) -> list[dict[str, Any]]:
    """Subsample the larger of red-team and helpful pairs so red-team pairs make up `harmless_share`.

    Pairs without a kind (imported without one) are all kept; with only one kind present there is nothing to balance.
    """
    red = [r for r in rows if r["kind"] == "red_team"]
    helpful = [r for r in rows if r["kind"] == "helpful"]
    if harmless_share is None or not red or not helpful:
        return rows
    if len(red) / (len(red) + len(helpful)) > harmless_share:
        red_wanted = round(harmless_share * len(helpful) / (1.0 - harmless_share))
        keep = random.Random(f"{seed}:pm-balance").sample(red, red_wanted)
        dropped = {id(r) for r in red} - {id(r) for r in keep}
    else:
        helpful_wanted = round((1.0 - harmless_share) * len(red) / harmless_share)
        keep = random.Random(f"{seed}:pm-balance").sample(helpful, helpful_wanted)
        dropped = {id(r) for r in helpful} - {id(r) for r in keep}
    return [r for r in rows if id(r) not in dropped]


# ---- held-out metrics -----------------------------------------------------------------------------------------


def pairwise_accuracy(margins: Sequence[float], labels: Sequence[float]) -> float | None:
    """Share of pairs whose reward order matches the hard label (p > 0.5); pairs labelled exactly 0.5 don't count."""
    decided = [(m, p) for m, p in zip(margins, labels, strict=True) if p != 0.5]
    if not decided:
        return None
    return sum((m > 0) == (p > 0.5) for m, p in decided) / len(decided)


def pm_metrics(
    margins: Sequence[float], held_out: list[dict[str, Any]], train_rows: list[dict[str, Any]], bins: int
) -> PMMetrics:
    """Training pair counts, and on the held-out pairs: accuracy (overall and per kind) and calibration."""
    labels = [r["p_chosen"] for r in held_out]
    by_kind = {}
    for kind in _KINDS:
        picked = [(m, r["p_chosen"]) for m, r in zip(margins, held_out, strict=True) if r["kind"] == kind]
        if picked:
            by_kind[kind] = KindAccuracy(pairs=len(picked), accuracy=pairwise_accuracy(*zip(*picked, strict=True)))
    kinds = Counter(r["kind"] for r in train_rows)
    return PMMetrics(
        train_pairs=len(train_rows),
        train_red_team=kinds["red_team"],
        train_helpful=kinds["helpful"],
        held_out_pairs=len(held_out),
        accuracy=pairwise_accuracy(margins, labels),
        by_kind=by_kind,
        # sigmoid(margin) is the model's P(chosen is better); the soft label is the frequency it should match.
        calibration=calibrate([1.0 / (1.0 + math.exp(-m)) for m in margins], labels, bins) if held_out else None,
    )


# ---- the stage ------------------------------------------------------------------------------------------------


def _training_rows(comparisons: list[ComparisonRecord], config: PMConfig) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they came from): the imported file when the config names one, else the comparisons."""
    if config.preference_data is not None:
        return load_preference_file(config.preference_data), config.preference_data
    if not comparisons:
        raise InputError(
            "no comparison records to train on",
            hint="run `cai rl label` with the same --config first, or set --preference-data FILE.jsonl",
        )
    first = comparisons[0]
    return comparison_rows(comparisons), f"the feedback model `{first.model}` (constitution {first.constitution})"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _model_card(source: str, config: PMConfig, metrics: PMMetrics) -> str:
    return (
        f"# Preference model\n\nA scalar score head on `{config.base_model}`, trained with `constitutional` (TRL "
        f"RewardTrainer, soft-label cross-entropy{', LoRA merged' if config.lora else ''}) on AI-feedback comparisons "
        f"from {source}.\n\n- training pairs: {metrics.train_pairs} ({metrics.train_red_team} red-team, "
        f"{metrics.train_helpful} helpful)\n- held-out pairs: {metrics.held_out_pairs}\n"
        f"- held-out pairwise accuracy: {_fmt(metrics.accuracy)}\n"
        f"- held-out calibration error (ECE): {_fmt(metrics.calibration and metrics.calibration.ece)}\n\n"
        "Score answers with `cai pm score`, or in Python with\n"
        "`constitutional.reward.PreferenceModel(model_dir).score(conversations, responses)`.\n\n"
        f"## Config\n\n```json\n{config.model_dump_json(indent=2)}\n```\n"
    )


def train(
    comparisons: list[ComparisonRecord], config: PMConfig, seed: int, outputs: TrainingOutputs
) -> dict[str, Any]:
    """Train the preference model on `comparisons` (or on `config.preference_data` when set, ignoring them).

    Saves it to `outputs.model_dir` with its settings and held-out metrics (records.PMMetrics); resumes from the
    last checkpoint in `outputs.checkpoint_dir`. Returns a summary: pair counts, steps, first and last training
    loss, held-out accuracy and ECE, the model folder and the step training resumed from (None when fresh).
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig

    from constitutional.models.embedded import resolve

    rows, source = _training_rows(comparisons, config)
    train_rows, eval_rows = split(rows, config.eval_fraction, seed)
    train_rows = balance_kinds(train_rows, config.harmless_share, seed)
    if not train_rows:
        raise InputError(
            "no pairs left to train on",
            field="pm.eval_fraction",
            hint="lower --eval-fraction or change --harmless-share",
        )
    path = resolve(config.base_model)
    tokenizer = with_pad_token(load_tokenizer(path))

    def tokenized(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "chosen_ids": encode(tokenizer, row["prompt"], row["chosen"], config.max_length),
            "rejected_ids": encode(tokenizer, row["prompt"], row["rejected"], config.max_length),
            "p_chosen": row["p_chosen"],
        }

    set_seed(seed)  # the new score head's initial weights are drawn when the model loads
    model = load_score_model(path, num_labels=1)
    args = trl_config(
        RewardConfig,
        config,
        outputs,
        seed,
        num_train_epochs=config.epochs,
        max_length=None,  # `encode` already truncated, keeping the answer end the score head reads
        remove_unused_columns=False,  # keep p_chosen for the collator
    )
    trainer_class, collator_class = _soft_label_trainer()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([tokenized(r) for r in train_rows]),
        processing_class=tokenizer,
        data_collator=collator_class(pad_token_id=tokenizer.pad_token_id),
        # The new score head must train in full, not through adapters.
        peft_config=config.peft_config("SEQ_CLS", modules_to_save=["score"]),
    )
    resumed_from = run_training(trainer, outputs)

    margins = []
    if eval_rows:
        chosen = [encode(tokenizer, r["prompt"], r["chosen"], config.max_length) for r in eval_rows]
        rejected = [encode(tokenizer, r["prompt"], r["rejected"], config.max_length) for r in eval_rows]
        scores = rewards(trainer.model, tokenizer.pad_token_id, chosen + rejected)
        margins = [c - r for c, r in zip(scores[: len(eval_rows)], scores[len(eval_rows) :], strict=True)]
    metrics = pm_metrics(margins, eval_rows, train_rows, config.calibration_bins)
    history = trainer.state.log_history
    output = save_trained(
        trainer.model,
        tokenizer,
        outputs,
        lora=config.lora,
        card=_model_card(source, config, metrics),
        log_history=history,
        extra_files={SETTINGS_FILE: config.model_dump_json(indent=2), METRICS_FILE: metrics.model_dump_json(indent=2)},
    )
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "train_pairs": metrics.train_pairs,
        "train_red_team": metrics.train_red_team,
        "train_helpful": metrics.train_helpful,
        "eval_pairs": len(eval_rows),
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_accuracy": metrics.accuracy,
        "eval_ece": metrics.calibration.ece if metrics.calibration else None,
        "model_dir": str(output),
        "resumed_from_step": resumed_from,
    }
