"""The preference model: a scalar head on a small LM, trained on the feedback model's soft labels.

Training goes through TRL's RewardTrainer with one change: the loss is the cross-entropy between the soft label
p = P(chosen is better) and sigmoid(r_chosen - r_rejected), which is Bradley-Terry's loss when p = 1. A seeded
share of the pairs is held out to measure pairwise accuracy and calibration, as the paper reports for its PMs.

Sequences are tokenized here (not by the trainer) so that training and `score` read exactly the same tokens.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from constitutional.errors import InputError
from constitutional.finetuning import LoraSettings
from constitutional.jsonl import read_json_lines
from constitutional.models.base import Message, render_transcript

STAGE = "pm_train"
LABEL_STAGE = "rl_label"
MODEL_DIR = "preference_model"
_KINDS = ("red_team", "helpful")


class PMConfig(LoraSettings):
    """Training the preference model on soft labels."""

    model_config = ConfigDict(extra="forbid")

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
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps; -1 for whole epochs.")
    batch_size: int = Field(default=8, ge=1, description="Pairs per step (each pair is two sequences).")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
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


def _conversation(value: Any) -> list[Message] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    return None


def load_preference_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows {id, kind, prompt, chosen, rejected, p_chosen} from a JSONL of TRL preference rows plus soft labels."""
    path = Path(path)
    rows = []
    for number, row in read_json_lines(path):

        def refuse(message: str, field: str, hint: str, number=number) -> InputError:
            return InputError(message, path=path, line=number, field=field, hint=hint)

        prompt = _conversation(row.get("prompt"))
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


def comparison_rows(comparisons: Sequence[Any]) -> list[dict[str, Any]]:
    """The run's ComparisonRecords as rows, through their TRL export (`preference_row`)."""
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


# ---- tokens and rewards ---------------------------------------------------------------------------------------


def encode(tokenizer: Any, conversation: list[Message], response: str, max_length: int | None) -> list[int]:
    """Token ids of a conversation ending in `response`; over-long sequences lose their start, never the answer."""
    if tokenizer.chat_template:
        messages = [*conversation, {"role": "assistant", "content": response}]
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    else:
        text = render_transcript(conversation) + " " + response.strip() + (tokenizer.eos_token or "")
        ids = tokenizer(text)["input_ids"]
    return ids[-max_length:] if max_length else ids


def rewards(model: Any, pad_token_id: int, sequences: Sequence[list[int]], batch_size: int = 16) -> list[float]:
    """The score head's output for each token sequence, in batches of similar length."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    out = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            ids = [torch.tensor(sequences[i]) for i in indices]
            input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_token_id).to(model.device)
            mask = pad_sequence([torch.ones_like(t) for t in ids], batch_first=True).to(model.device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1).float()
            for i, value in zip(indices, logits.tolist(), strict=True):
                out[i] = value
    return out


class PreferenceModel:
    """A trained preference model read from its folder, scoring answers exactly as it was trained to read them."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise InputError(
                "not a preference model folder (no config.json)", path=model_dir, hint="train one with `cai pm train`"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32, use_safetensors=True
        )
        settings = model_dir / "pm_config.json"
        self.max_length = json.loads(settings.read_text())["max_length"] if settings.exists() else None
        if self.model.config.pad_token_id is None:  # the head finds each row's last token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.pad_token_id = self.model.config.pad_token_id
        self.batch_size = batch_size

    def score(self, conversations: Sequence[list[Message]], responses: Sequence[str]) -> list[float]:
        """Scores (higher is better) of each response to its conversation, batched."""
        if len(conversations) != len(responses):
            raise InputError(f"{len(conversations)} conversations but {len(responses)} responses")
        sequences = [
            encode(self.tokenizer, c, r, self.max_length) for c, r in zip(conversations, responses, strict=True)
        ]
        return rewards(self.model, self.pad_token_id, sequences, self.batch_size)


def load_responses(path: str | Path) -> tuple[list[dict[str, Any]], list[list[Message]], list[str]]:
    """(rows, conversations, responses) from a JSONL of {"prompt" | "messages", "response"} for `cai pm score`."""
    path = Path(path)
    rows, conversations, responses = [], [], []
    for number, row in read_json_lines(path):
        field = "messages" if "messages" in row else "prompt"
        conversation = _conversation(row.get(field))
        if conversation is None:
            raise InputError(
                f"missing or not a conversation: {field}",
                path=path,
                line=number,
                field=field,
                hint="give 'prompt' (a string) or 'messages' (a list of {role, content})",
            )
        if not isinstance(row.get("response"), str):
            raise InputError("missing or not a string: response", path=path, line=number, field="response")
        rows.append(row)
        conversations.append(conversation)
        responses.append(row["response"])
    return rows, conversations, responses


# ---- held-out metrics -----------------------------------------------------------------------------------------


def calibration(margins: Sequence[float], labels: Sequence[float], bins: int) -> dict[str, Any]:
    """Expected calibration error of sigmoid(margin) against soft labels, with the reliability bins behind it."""
    import numpy as np

    predicted = 1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=float)))
    observed = np.asarray(labels, dtype=float)
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        gap = abs(predicted[inside].mean() - observed[inside].mean())
        ece += inside.mean() * gap
        table.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": int(inside.sum()),
                "predicted": float(predicted[inside].mean()),
                "observed": float(observed[inside].mean()),  # the mean soft label: the frequency to match
            }
        )
    return {"ece": float(ece), "bins": table}


def pairwise_accuracy(margins: Sequence[float], labels: Sequence[float]) -> float | None:
    """Share of pairs whose reward order matches the hard label (p > 0.5); pairs labelled exactly 0.5 don't count."""
    decided = [(m, p) for m, p in zip(margins, labels, strict=True) if p != 0.5]
    if not decided:
        return None
    return sum((m > 0) == (p > 0.5) for m, p in decided) / len(decided)


def held_out_metrics(margins: list[float], rows: list[dict[str, Any]], bins: int) -> dict[str, Any]:
    labels = [r["p_chosen"] for r in rows]
    by_kind = {}
    for kind in _KINDS:
        picked = [(m, r["p_chosen"]) for m, r in zip(margins, rows, strict=True) if r["kind"] == kind]
        if picked:
            by_kind[kind] = {"pairs": len(picked), "accuracy": pairwise_accuracy(*zip(*picked, strict=True))}
    return {
        "pairs": len(rows),
        "accuracy": pairwise_accuracy(margins, labels),
        "by_kind": by_kind,
        "calibration": calibration(margins, labels, bins) if rows else None,
    }


# ---- the stage ------------------------------------------------------------------------------------------------


def _training_rows(store: Any, config: PMConfig) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they came from): the imported file, else the run's comparisons."""
    if config.preference_data is not None:
        return load_preference_file(config.preference_data), config.preference_data
    from constitutional.records import ComparisonRecord

    comparisons = store.stage(LABEL_STAGE).records(ComparisonRecord)
    if not comparisons:
        raise InputError(
            "no comparison records to train on",
            path=store.dir / LABEL_STAGE,
            hint="run `cai rl label` with the same --config first, or set --preference-data FILE.jsonl",
        )
    return comparison_rows(comparisons), f"{store.dir / LABEL_STAGE} ({comparisons[0].model} feedback)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _model_card(base: str, source: str, config: PMConfig, counts: dict[str, int], metrics: dict[str, Any]) -> str:
    return (
        f"# Preference model\n\nA scalar score head on `{base}`, trained with `constitutional` (TRL RewardTrainer, "
        f"soft-label cross-entropy{', LoRA merged' if config.lora else ''}) on AI-feedback comparisons from "
        f"{source}.\n\n- training pairs: {counts['train']} ({counts['red_team']} red-team, {counts['helpful']} "
        f"helpful)\n- held-out pairs: {metrics['pairs']}\n"
        f"- held-out pairwise accuracy: {_fmt(metrics['accuracy'])}\n"
        f"- held-out calibration error (ECE): {_fmt(metrics['calibration'] and metrics['calibration']['ece'])}\n\n"
        "Score answers with `cai pm score`, or in Python with\n"
        "`constitutional.preference.PreferenceModel(model_dir).score(conversations, responses)`.\n\n"
        f"## Config\n\n```json\n{config.model_dump_json(indent=2)}\n```\n"
    )


def train(store: Any, config: PMConfig, seed: int) -> dict[str, Any]:
    """Train the preference model on the run's comparisons (or imported pairs); save it to RUN_DIR/preference_model.

    Returns a summary: pair counts, first and last training loss, held-out accuracy and ECE, the model folder.
    """
    import torch
    from transformers import AutoTokenizer
    from trl import RewardConfig

    from constitutional.models.embedded import resolve
    from constitutional.store import to_dataset

    rows, source = _training_rows(store, config)
    train_rows, eval_rows = split(rows, config.eval_fraction, seed)
    train_rows = balance_kinds(train_rows, config.harmless_share, seed)
    if not train_rows:
        raise InputError("no pairs left to train on", hint="lower --eval-fraction or change --harmless-share")
    path = resolve(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def tokenized(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "chosen_ids": encode(tokenizer, row["prompt"], row["chosen"], config.max_length),
            "rejected_ids": encode(tokenizer, row["prompt"], row["rejected"], config.max_length),
            "p_chosen": row["p_chosen"],
        }

    dataset = to_dataset([tokenized(r) for r in train_rows])
    args = RewardConfig(
        output_dir=str(store.dir / STAGE / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        max_length=None,  # `encode` already truncated, keeping the answer end the score head reads
        remove_unused_columns=False,  # keep p_chosen for the collator
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        # TRL turns both on by default; on 2 CPU cores bf16 autocast made a step 1.9x slower (45 vs 24 s for 8
        # SmolLM2 pairs), and checkpointing spends compute to save memory a 135M model does not need.
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False,
    )
    # The new score head must train in full, not through adapters.
    peft_config = config.peft_config("SEQ_CLS", modules_to_save=["score"])
    trainer_class, collator_class = _soft_label_trainer()
    trainer = trainer_class(
        model=path,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator_class(pad_token_id=tokenizer.pad_token_id),
        peft_config=peft_config,
    )
    trainer.train()
    model = trainer.model.merge_and_unload() if config.lora else trainer.model
    output = store.dir / MODEL_DIR
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    (output / "pm_config.json").write_text(config.model_dump_json(indent=2))

    margins = []
    if eval_rows:
        chosen = [encode(tokenizer, r["prompt"], r["chosen"], config.max_length) for r in eval_rows]
        rejected = [encode(tokenizer, r["prompt"], r["rejected"], config.max_length) for r in eval_rows]
        scores = rewards(model, tokenizer.pad_token_id, chosen + rejected)
        margins = [c - r for c, r in zip(scores[: len(eval_rows)], scores[len(eval_rows) :], strict=True)]
    metrics = held_out_metrics(margins, eval_rows, config.calibration_bins)
    kinds = Counter(r["kind"] for r in train_rows)
    counts = {"train": len(train_rows), "red_team": kinds["red_team"], "helpful": kinds["helpful"]}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    (output / "metrics.json").write_text(json.dumps({"train": counts, "held_out": metrics}, indent=2))
    (output / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    (output / "README.md").write_text(_model_card(config.base_model, source, config, counts, metrics))
    return {
        "train_pairs": counts["train"],
        "train_red_team": counts["red_team"],
        "train_helpful": counts["helpful"],
        "eval_pairs": len(eval_rows),
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_accuracy": metrics["accuracy"],
        "eval_ece": metrics["calibration"]["ece"] if metrics["calibration"] else None,
        "model_dir": str(output),
    }
