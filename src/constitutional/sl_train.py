"""SFT on SL-CAI revisions with TRL's SFTTrainer (LoRA through peft by default), saved as safetensors."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Literal

from pydantic import ConfigDict, Field

from constitutional.errors import InputError
from constitutional.finetuning import LoraSettings
from constitutional.models.base import Message, render_transcript
from constitutional.records import SLRecord
from constitutional.sl import STAGE as GENERATE_STAGE
from constitutional.store import RunStore

STAGE = "sl_train"
MODEL_DIR = "sl_model"


class SLTrainConfig(LoraSettings):
    """Fine-tuning the policy on its own revisions."""

    model_config = ConfigDict(extra="forbid")

    revisions: Literal["final", "all"] = Field(
        default="final", description="Train on the last revision only, or on every revision step."
    )
    helpful_ratio: float = Field(
        default=1.0, ge=0, description="Helpfulness examples mixed in per red-team example (as many as exist)."
    )
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps; -1 for whole epochs.")
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
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


def _model_card(base: str, constitution: str, config: SLTrainConfig, counts: dict[str, int], loss: float) -> str:
    return (
        f"# SL-CAI policy\n\nFine-tuned from `{base}` on its own constitutional revisions "
        f"(constitution `{constitution}`) with `constitutional` (TRL SFTTrainer"
        f"{', LoRA merged' if config.lora else ', full fine-tuning'}).\n\n"
        f"- training examples: {counts['examples']} ({counts['red_team']} red-team revisions, "
        f"{counts['helpful']} helpfulness answers)\n- revisions used: {config.revisions}\n"
        f"- final training loss: {loss:.4f}\n\n## Config\n\n```json\n{config.model_dump_json(indent=2)}\n```\n"
    )


def train(store: RunStore, base_model: str, config: SLTrainConfig, seed: int) -> dict[str, Any]:
    """Fine-tune `base_model` (a name or path) on the run's SL records, saved to `run_dir/sl_model`.

    Returns a summary: example and step counts, first and last training loss, the model folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from constitutional.models.embedded import resolve
    from constitutional.store import to_dataset

    records = store.stage(GENERATE_STAGE).records(SLRecord)
    if not records:
        raise InputError(
            "no SL-CAI records to train on",
            path=store.dir / GENERATE_STAGE,
            hint="run `cai sl generate` with the same --config first",
        )
    examples = sft_examples(records, config.revisions, config.helpful_ratio, seed)
    path = resolve(base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    chat = bool(tokenizer.chat_template)
    dataset = to_dataset([_prompt_completion(row["messages"], chat) for row in examples])
    # fp32 on CPU: bf16 autocast training on CPU is slower here and loses precision in the adapters.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    output = store.dir / MODEL_DIR
    args = SFTConfig(
        output_dir=str(store.dir / "sl_train" / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=config.peft_config("CAUSAL_LM"),
    )
    result = trainer.train()
    trained = trainer.model
    if config.lora:
        trained.save_pretrained(output / "adapter")
        trained = trained.merge_and_unload()
    trained.save_pretrained(output)
    tokenizer.save_pretrained(output)
    counts = {"examples": len(examples), "red_team": 0, "helpful": 0} | Counter(row["kind"] for row in examples)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    constitution = records[0].constitution
    (output / "README.md").write_text(_model_card(base_model, constitution, config, counts, result.training_loss))
    (output / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
    return {
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "model_dir": str(output),
    }
