"""SFT on SL-CAI revisions with TRL's SFTTrainer (LoRA through peft by default), saved as safetensors."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Literal

from pydantic import Field

from constitutional.errors import InputError
from constitutional.finetuning import (
    TrainingOutputs,
    TrainingSettings,
    load_causal_lm,
    load_tokenizer,
    run_training,
    save_trained,
    trl_config,
)
from constitutional.models.base import Message, render_transcript
from constitutional.models.spec import ModelSpec
from constitutional.records import SLRecord


class SLTrainConfig(TrainingSettings):
    """Fine-tuning the policy on its own revisions."""

    revisions: Literal["final", "all"] = Field(
        default="final", description="Train on the last revision only, or on every revision step."
    )
    helpful_ratio: float = Field(
        default=1.0, ge=0, description="Helpfulness examples mixed in per red-team example (as many as exist)."
    )
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    epochs: float = Field(default=1.0, gt=0)
    max_length: int = Field(default=512, ge=16, description="Tokens per example; longer ones are truncated.")


def sft_examples(records: list[SLRecord], revisions: str, helpful_ratio: float, seed: int) -> list[dict[str, Any]]:
    """`{"messages": [...prompt, assistant revision]}` rows: the SFT export of ARCHITECTURE.md."""
    red_team = [r for r in records if r.kind == "red_team"]
    helpful = [r for r in records if r.kind == "helpful"]
    rows = []
    for record in red_team:
        answers = [s.revision for s in record.steps] if revisions == "all" else [record.final]
        rows += [
            {"messages": [*record.prompt, {"role": "assistant", "content": a}], "id": record.id, "kind": record.kind}
            for a in answers
        ]
    wanted = min(len(helpful), round(helpful_ratio * len(red_team)))
    for record in random.Random(seed).sample(helpful, wanted):
        rows.append(
            {
                "messages": [*record.prompt, {"role": "assistant", "content": record.initial}],
                "id": record.id,
                "kind": record.kind,
            }
        )
    return [row for row in rows if row["messages"][-1]["content"].strip()]


def _prompt_completion(messages: list[Message], chat: bool) -> dict[str, Any]:
    """TRL's prompt-completion format, so the loss falls on the answer only."""
    if chat:
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"prompt": render_transcript(messages[:-1]), "completion": " " + messages[-1]["content"]}


def _model_card(
    base: str, constitution: str, config: SLTrainConfig, counts: dict[str, int], loss: float | None
) -> str:
    return (
        f"# SL-CAI policy\n\nFine-tuned from `{base}` on its own constitutional revisions "
        f"(constitution `{constitution}`) with `constitutional` (TRL SFTTrainer"
        f"{', LoRA merged' if config.lora else ', full fine-tuning'}).\n\n"
        f"- training examples: {counts['examples']} ({counts['red_team']} red-team revisions, "
        f"{counts['helpful']} helpfulness answers)\n- revisions used: {config.revisions}\n"
        f"- last logged training loss: {'n/a' if loss is None else f'{loss:.4f}'}\n\n"
        f"## Config\n\n```json\n{config.model_dump_json(indent=2)}\n```\n"
    )


def train(
    records: list[SLRecord], base: ModelSpec, config: SLTrainConfig, seed: int, outputs: TrainingOutputs
) -> dict[str, Any]:
    """Fine-tune the `base` policy on SL-CAI records; save it to `outputs.model_dir`.

    Resumes from the last checkpoint in `outputs.checkpoint_dir`. Returns a summary: example and step counts,
    first and last training loss, the model folder and the step training resumed from (None when fresh).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from constitutional.models.embedded import resolve

    if not records:
        raise InputError("no SL-CAI records to train on", hint="run `cai sl generate` with the same --config first")
    examples = sft_examples(records, config.revisions, config.helpful_ratio, seed)
    if not examples:
        raise InputError(
            f"no non-empty answer to train on among {len(records)} SL-CAI records",
            hint="raise --helpful-ratio to mix in helpfulness answers, or rerun `cai sl generate` with another policy",
        )
    path = resolve(base.name)
    tokenizer = load_tokenizer(path, trust_remote_code=base.trust_remote_code)
    chat = bool(tokenizer.chat_template)
    model = load_causal_lm(path, trust_remote_code=base.trust_remote_code)
    args = trl_config(SFTConfig, config, outputs, seed, num_train_epochs=config.epochs, max_length=config.max_length)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([_prompt_completion(row["messages"], chat) for row in examples]),
        processing_class=tokenizer,
        peft_config=config.peft_config("CAUSAL_LM"),
    )
    resumed_from = run_training(trainer, outputs)
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    counts = {"examples": len(examples), "red_team": 0, "helpful": 0} | Counter(row["kind"] for row in examples)
    card = _model_card(base.name, records[0].constitution, config, counts, losses[-1] if losses else None)
    output = save_trained(trainer.model, tokenizer, outputs, lora=config.lora, card=card, log_history=history)
    return {
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "model_dir": str(output),
        "resumed_from_step": resumed_from,
    }
