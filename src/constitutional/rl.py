"""RL against the preference model (TRL's RLOO or GRPO), or DPO on the AI-labelled pairs as the offline option.

The caller names the policy to start from (the paper's RL-CAI starts from the SL-CAI model); RL trains LoRA adapters
through peft, and the policy is saved merged as safetensors. The reward is the preference model's scalar score of
the whole conversation (loaded by `reward.load_reward_model`). The KL penalty to the starting policy (`beta`) is
computed by switching the adapters off, so no second copy of the model is held in memory.

Tokenizers: the policy and the preference model may tokenize differently. TRL decodes every completion to text
and re-tokenizes prompt + completion with the preference model's own tokenizer (rendering conversations with
*its* chat template), so mismatched tokenizers are handled. The one case that cannot work is a conversational
policy scored by a preference model whose tokenizer has no chat template: that is refused up front.

DPO and soft labels: TRL's DPO losses take hard chosen/rejected pairs. Rather than override its loss, pairs whose
soft label is close to a coin flip (`dpo_min_confidence`) are left out -- the feedback model had no real preference
there, and training on them only teaches noise. The soft labels are used in full by the preference model.
"""

from __future__ import annotations

import random
from pathlib import Path
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
from constitutional.models.base import render_transcript
from constitutional.records import ComparisonRecord, PromptRecord
from constitutional.reward import load_reward_model


class RLConfig(TrainingSettings):
    """RL against the preference model (RLOO, GRPO) or DPO on the labelled pairs."""

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


def _shared_args(config: RLConfig) -> dict[str, Any]:
    # The house progress bar replaces TRL's tqdm bar (and the per-step log dicts printed to stdout).
    return {"beta": config.beta, "disable_tqdm": True}


def _online_trainer(
    config: RLConfig,
    start: str,
    tokenizer,
    chat: bool,
    seed: int,
    outputs: TrainingOutputs,
    reward_model_dir: Path | None,
):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    check_groups(config)
    if reward_model_dir is None:
        raise InputError(
            f"{config.algo.upper()} scores completions with a preference model, and none was given",
            field="rl.algo",
            hint="train one with `cai pm train` first, or set --algo dpo to learn from the labelled pairs",
        )
    reward_model, reward_tokenizer = load_reward_model(reward_model_dir, chat)
    dataset = Dataset.from_list(rl_prompts(config, chat, seed))
    config_class, trainer_class = (RLOOConfig, RLOOTrainer) if config.algo == "rloo" else (GRPOConfig, GRPOTrainer)
    args = trl_config(
        config_class,
        config,
        outputs,
        seed,
        **_shared_args(config),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        generation_kwargs={"no_repeat_ngram_size": config.no_repeat_ngram_size},
    )
    trainer = trainer_class(
        model=load_causal_lm(start),
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


def _dpo_trainer(
    config: RLConfig,
    start: str,
    tokenizer,
    chat: bool,
    seed: int,
    outputs: TrainingOutputs,
    comparisons: list[ComparisonRecord] | None,
):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not comparisons:
        raise InputError(
            "no labelled pairs for DPO", field="rl.algo", hint="run `cai rl label` with the same --config first"
        )
    rows = dpo_rows(comparisons, chat, config.dpo_min_confidence)
    if not rows:
        raise InputError(
            f"all {len(comparisons)} labelled pairs have p(chosen) below "
            f"dpo_min_confidence={config.dpo_min_confidence}",
            field="rl.dpo_min_confidence",
            hint="lower --dpo-min-confidence (0.5 keeps every pair)",
        )
    args = trl_config(DPOConfig, config, outputs, seed, **_shared_args(config), max_length=config.max_length)
    trainer = DPOTrainer(
        model=load_causal_lm(start),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=config.peft_config("CAUSAL_LM"),
    )
    return trainer, {"pairs": len(rows), "pairs_left_out": len(comparisons) - len(rows)}


def _progress_callback():
    """Advances the house progress bar once per optimizer step, from the step a resumed run starts at."""
    from transformers import TrainerCallback

    from constitutional.progress import progress_bar

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress_bar()
            self.bar.start()
            # The trainer has restored a checkpoint's state by now: global_step is where a resumed run picks up.
            self.task = self.bar.add_task("rl train", total=state.max_steps, completed=state.global_step, unit="step")

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
        "rloo": "RLOO against the preference model",
        "grpo": "GRPO against the preference model",
        "dpo": "DPO on the AI-labelled pairs",
    }[config.algo]
    figures = "\n".join(f"- {key}: {value}" for key, value in summary.items() if key != "model_dir")
    return (
        f"# RL-CAI policy\n\nTrained from `{start}` with {how} (TRL, "
        f"{'LoRA merged' if config.lora else 'full fine-tuning'}) by `constitutional`.\n\n{figures}\n\n"
        f"## Config\n\n```json\n{config.model_dump_json(indent=2)}\n```\n"
    )


def train(
    start: str,
    config: RLConfig,
    seed: int,
    outputs: TrainingOutputs,
    *,
    reward_model_dir: Path | None = None,
    comparisons: list[ComparisonRecord] | None = None,
) -> dict[str, Any]:
    """Train the policy `start` (a folder, Hugging Face id or embedded name) with `config.algo`; save it merged to
    `outputs.model_dir`, resuming from the last checkpoint in `outputs.checkpoint_dir`.

    RLOO and GRPO need `reward_model_dir` (a preference model); DPO needs `comparisons` (the labelled pairs).
    Returns a summary: algo, start model, steps, mean reward first/last (RLOO/GRPO) or DPO loss and preference
    accuracy first/last, the model folder and the step training resumed from (None when fresh).
    """
    from transformers import PrinterCallback

    from constitutional.models.embedded import resolve

    path = resolve(start)
    tokenizer = load_tokenizer(path, padding_side="left")
    chat = bool(tokenizer.chat_template)
    if config.algo == "dpo":
        trainer, notes = _dpo_trainer(config, path, tokenizer, chat, seed, outputs, comparisons)
    else:
        trainer, notes = _online_trainer(config, path, tokenizer, chat, seed, outputs, reward_model_dir)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_progress_callback())
    resumed_from = run_training(trainer, outputs)
    history = trainer.state.log_history
    summary: dict[str, Any] = {"algo": config.algo, "start": start, "steps": trainer.state.global_step, **notes}
    if config.algo == "dpo":
        summary["first_loss"], summary["last_loss"] = _first_last(history, "loss")
        summary["first_accuracy"], summary["last_accuracy"] = _first_last(history, "rewards/accuracies")
    else:
        summary["first_reward"], summary["last_reward"] = _first_last(history, "reward")
    summary["resumed_from_step"] = resumed_from
    card = _model_card(start, config, summary)
    summary["model_dir"] = str(
        save_trained(trainer.model, tokenizer, outputs, lora=config.lora, card=card, log_history=history)
    )
    return summary
