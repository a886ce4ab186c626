"""RL against the preference model (TRL's RLOO or GRPO), or DPO on the AI-labelled pairs as the offline option.

The policy starts from the SL-CAI model when the run has one (the paper's RL-CAI starts from SL-CAI), trains LoRA
adapters through peft, and is saved merged as safetensors to `run_dir/rl_model`. The reward is the preference
model's scalar score of the whole conversation. The KL penalty to the starting policy (`beta`) is computed by
switching the adapters off, so no second copy of the model is held in memory.

Tokenizers: the policy and the preference model may tokenize differently. TRL decodes every completion to text
and re-tokenizes prompt + completion with the preference model's own tokenizer (rendering conversations with
*its* chat template), so mismatched tokenizers are handled. The one case that cannot work is a conversational
policy scored by a preference model whose tokenizer has no chat template: that is refused up front.

DPO and soft labels: TRL's DPO losses take hard chosen/rejected pairs. Rather than override its loss, pairs whose
soft label is close to a coin flip (`dpo_min_confidence`) are left out -- the feedback model had no real preference
there, and training on them only teaches noise. The soft labels are used in full by the preference model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from constitutional.errors import InputError
from constitutional.finetuning import LoraSettings
from constitutional.models.base import render_transcript
from constitutional.records import ComparisonRecord, PromptRecord
from constitutional.store import RunStore

STAGE = "rl_train"
MODEL_DIR = "rl_model"
PM_DIR = "preference_model"
SL_MODEL_DIR = "sl_model"
LABEL_STAGE = "rl_label"


class RLConfig(LoraSettings):
    """RL against the preference model (RLOO, GRPO) or DPO on the labelled pairs."""

    model_config = ConfigDict(extra="forbid")

    algo: Literal["rloo", "grpo", "dpo"] = Field(
        default="rloo",
        description="rloo or grpo: online RL against the preference model; dpo: offline, on the labelled pairs.",
    )
    start_from: Literal["auto", "sl", "base"] = Field(
        default="auto",
        description="Policy to train: sl = run_dir/sl_model, base = models.policy, auto = sl_model if it exists.",
    )
    red_team_prompts: str | None = Field(default="builtin:red-team", description="RL prompts: a file or builtin:.")
    helpful_prompts: str | None = Field(
        default="builtin:helpful", description="Helpfulness prompts mixed in, so harmlessness does not crowd out help."
    )
    max_prompts: int = Field(default=200, ge=1, description="At most this many prompts from each source.")
    max_steps: int = Field(default=50, ge=1, description="Optimizer steps.")
    batch_size: int = Field(
        default=8, ge=1, description="Completions per device per step (RLOO/GRPO), or pairs per step (DPO)."
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    num_generations: int = Field(
        default=4, ge=1, description="Completions per prompt; RLOO/GRPO compare them, so at least 2."
    )
    learning_rate: float = Field(default=1e-5, gt=0)
    beta: float = Field(
        default=0.05, ge=0, description="KL penalty to the starting policy (RLOO/GRPO) or DPO's temperature."
    )
    max_completion_length: int = Field(default=64, ge=1, description="Tokens generated per completion during RL.")
    temperature: float = Field(default=0.9, gt=0, description="Sampling temperature during RL.")
    top_p: float = Field(default=0.95, gt=0, le=1)
    # Models of ~100M parameters loop on a phrase within a few dozen tokens without these two.
    repetition_penalty: float = Field(default=1.2, ge=1.0)
    no_repeat_ngram_size: int = Field(default=4, ge=0, description="0 turns the n-gram block off.")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="0: dropout would make the KL term noisy.")
    dpo_min_confidence: float = Field(
        default=0.6, ge=0.5, le=1.0, description="DPO keeps pairs whose soft label p(chosen) is at least this."
    )
    max_length: int = Field(default=512, ge=16, description="DPO: tokens per prompt + answer; longer are cut.")


def check_groups(config: RLConfig) -> None:
    """RLOO and GRPO score each completion against the others for the same prompt: groups must be whole."""
    if config.num_generations < 2:
        raise InputError(
            f"num_generations={config.num_generations}: {config.algo.upper()} needs at least 2 completions per "
            "prompt, because each completion's advantage is its reward minus the others' mean",
            field="rl.num_generations",
            hint="set --num-generations 2 or more (4 is usual)",
        )
    rows = config.batch_size * config.gradient_accumulation_steps
    if rows % config.num_generations:
        raise InputError(
            f"batch_size x gradient_accumulation_steps = {rows} completions per generation round is not a multiple "
            f"of num_generations={config.num_generations}: a prompt's completions would be split across rounds",
            field="rl.batch_size",
            hint=f"make batch_size x gradient_accumulation_steps a multiple of {config.num_generations}, "
            f"e.g. --batch-size {config.num_generations * -(-config.batch_size // config.num_generations)}",
        )


def policy_path(store: RunStore, base_model: str, start_from: str) -> str:
    """The model RL starts from: the run's SL-CAI model, or the base policy (a name or path)."""
    from constitutional.models.embedded import resolve

    sl_model = store.dir / SL_MODEL_DIR
    if start_from == "sl" or (start_from == "auto" and (sl_model / "config.json").exists()):
        if not (sl_model / "config.json").exists():
            raise InputError(
                "start_from=sl but the run has no SL-CAI model", path=sl_model, hint="run `cai sl train` first"
            )
        return str(sl_model)
    return resolve(base_model)


def rl_prompts(config: RLConfig, chat: bool, seed: int) -> list[dict[str, Any]]:
    """`{"prompt"}` rows: messages for a chat policy, else the Human/Assistant transcript; up to max per source."""
    from constitutional.sources import load_prompts

    rows = []
    for source in (config.red_team_prompts, config.helpful_prompts):
        if source is None:
            continue
        records: list[PromptRecord] = load_prompts(source)[0]
        random.Random(seed).shuffle(records)
        rows += [
            {"prompt": r.messages if chat else render_transcript(r.messages), "id": r.id}
            for r in records[: config.max_prompts]
        ]
    if not rows:
        raise InputError("no RL prompts", field="rl.red_team_prompts", hint="name at least one prompt source")
    return rows


def load_preference_model(store: RunStore, chat: bool):
    """The run's preference model and tokenizer, checked to be usable as a reward for this policy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = store.dir / PM_DIR
    if not (path / "config.json").exists():
        raise InputError("the run has no preference model", path=path, hint="run `cai pm train` first")
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    if model.config.num_labels != 1:
        raise InputError(
            f"the preference model has num_labels={model.config.num_labels}; a reward needs one scalar score",
            path=path / "config.json",
            field="num_labels",
            hint="train it with `cai pm train`, which saves a num_labels=1 model",
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat and not tokenizer.chat_template:
        raise InputError(
            "the policy takes chat prompts but the preference model's tokenizer has no chat template, so the "
            "conversations it should score cannot be rendered for it",
            path=path / "tokenizer_config.json",
            field="chat_template",
            hint="train the preference model from a chat model, or start RL from a policy without a chat template",
        )
    return model, tokenizer


def _common_args(store: RunStore, config: RLConfig, seed: int) -> dict[str, Any]:
    import torch

    return {
        "output_dir": str(store.dir / STAGE / "checkpoints"),
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "beta": config.beta,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "use_cpu": not torch.cuda.is_available(),
        # fp32 on CPU: bf16 autocast is slower there and loses precision in the adapters.
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        # Checkpointing trades compute for memory; small models on CPU have memory to spare.
        "activation_checkpointing": torch.cuda.is_available(),
        "disable_tqdm": True,
    }


def _online_trainer(store: RunStore, config: RLConfig, model, tokenizer, chat: bool, seed: int):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from constitutional.store import to_dataset

    check_groups(config)
    reward_model, reward_tokenizer = load_preference_model(store, chat)
    dataset = to_dataset(rl_prompts(config, chat, seed))
    config_class, trainer_class = (RLOOConfig, RLOOTrainer) if config.algo == "rloo" else (GRPOConfig, GRPOTrainer)
    args = config_class(
        **_common_args(store, config, seed),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        generation_kwargs={"no_repeat_ngram_size": config.no_repeat_ngram_size},
    )
    trainer = trainer_class(
        model=model,
        reward_funcs=reward_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
        peft_config=config.peft_config("CAUSAL_LM"),
    )
    notes = {
        "prompts": len(dataset),
        "pm_tokenizer": "same as the policy's" if _same_tokenizer(tokenizer, reward_tokenizer) else "re-tokenized",
    }
    return trainer, notes


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template


def dpo_rows(records: list[ComparisonRecord], chat: bool, min_confidence: float) -> list[dict[str, Any]]:
    """TRL preference rows from the labelled pairs, leaving out near coin-flip labels."""
    rows = []
    for record in records:
        row = record.preference_row()
        if row["p_chosen"] < min_confidence:
            continue
        if not chat:
            row["prompt"] = render_transcript(row["prompt"])
            row["chosen"] = " " + row["chosen"][0]["content"]
            row["rejected"] = " " + row["rejected"][0]["content"]
        rows.append({key: row[key] for key in ("prompt", "chosen", "rejected", "p_chosen")})
    return rows


def _dpo_trainer(store: RunStore, config: RLConfig, model, tokenizer, chat: bool, seed: int):
    from trl import DPOConfig, DPOTrainer

    from constitutional.store import to_dataset

    records = store.stage(LABEL_STAGE).records(ComparisonRecord)
    if not records:
        raise InputError(
            "no labelled pairs for DPO", path=store.dir / LABEL_STAGE, hint="run `cai rl label` with the same --config"
        )
    rows = dpo_rows(records, chat, config.dpo_min_confidence)
    if not rows:
        raise InputError(
            f"all {len(records)} labelled pairs have p(chosen) below dpo_min_confidence={config.dpo_min_confidence}",
            field="rl.dpo_min_confidence",
            hint="lower --dpo-min-confidence (0.5 keeps every pair)",
        )
    args = DPOConfig(**_common_args(store, config, seed), max_length=config.max_length)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(rows),
        processing_class=tokenizer,
        peft_config=config.peft_config("CAUSAL_LM"),
    )
    return trainer, {"pairs": len(rows), "pairs_left_out": len(records) - len(rows)}


def _progress_callback(total: int):
    """Advances the house progress bar once per optimizer step."""
    from transformers import TrainerCallback

    from constitutional.progress import progress_bar

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task("rl train", total=total, unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.stop()

    return ProgressCallback()


def _first_last(history: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    values = [entry[key] for entry in history if key in entry]
    return (values[0], values[-1]) if values else (None, None)


def _model_card(start: str, config: RLConfig, summary: dict[str, Any]) -> str:
    how = {
        "rloo": "RLOO against the run's preference model",
        "grpo": "GRPO against the run's preference model",
        "dpo": "DPO on the AI-labelled pairs",
    }[config.algo]
    figures = "\n".join(f"- {key}: {value}" for key, value in summary.items() if key != "model_dir")
    return (
        f"# RL-CAI policy\n\nTrained from `{start}` with {how} (TRL, "
        f"{'LoRA merged' if config.lora else 'full fine-tuning'}) by `constitutional`.\n\n{figures}\n\n"
        f"## Config\n\n```json\n{config.model_dump_json(indent=2)}\n```\n"
    )


def train(store: RunStore, base_model: str, config: RLConfig, seed: int) -> dict[str, Any]:
    """Train the policy with `config.algo` and save it merged to `run_dir/rl_model`.

    Returns a summary: algo, start model, steps, mean reward first/last (RLOO/GRPO) or DPO loss and
    preference accuracy first/last, and the model folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    start = policy_path(store, base_model, config.start_from)
    tokenizer = AutoTokenizer.from_pretrained(start, padding_side="left")
    chat = bool(tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32, use_safetensors=True)
    make = _dpo_trainer if config.algo == "dpo" else _online_trainer
    trainer, notes = make(store, config, model, tokenizer, chat, seed)
    # The house progress bar replaces transformers' per-step log dicts printed to stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_progress_callback(config.max_steps))
    trainer.train()
    history = trainer.state.log_history
    summary: dict[str, Any] = {"algo": config.algo, "start": start, "steps": trainer.state.global_step, **notes}
    if config.algo == "dpo":
        summary["first_loss"], summary["last_loss"] = _first_last(history, "loss")
        summary["first_accuracy"], summary["last_accuracy"] = _first_last(history, "rewards/accuracies")
    else:
        summary["first_reward"], summary["last_reward"] = _first_last(history, "reward")
    output = store.dir / MODEL_DIR
    summary["model_dir"] = str(output)
    _save(trainer.model, tokenizer, output, config.lora)
    (output / "README.md").write_text(_model_card(start, config, summary))
    (output / "training_log.json").write_text(json.dumps(history, indent=2))
    return summary


def _save(model, tokenizer, output: Path, lora: bool) -> None:
    if lora:
        model.save_pretrained(output / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
