"""Seconds per SFT step on this machine: TRL's default precision settings against the fine-tuning kit's choice.

TRL's configs turn bf16 autocast and gradient (activation) checkpointing on by default. `finetuning.device_arguments`
turns both off on a CPU (fp32, no recomputation) and on on a GPU. Both arms fine-tune the demo policy with the demo
recipe's LoRA settings on the same rows (built-in prompts with fixed answers) for the same number of steps; the
arms alternate, so a change of machine load mid-run hits both. Checkpoints are off in both (saving is not timed).

    .venv/bin/python benchmarks/training_args.py --steps 4 --rounds 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from constitutional.finetuning import TrainingOutputs, device_arguments, trl_config
from constitutional.recipe import DEMO_RECIPE, load_recipe
from constitutional.sources import load_prompts


def _rows(count: int) -> list[dict]:
    prompts, _ = load_prompts("builtin:red-team")
    answer = "I can't help with that, but here is a safer way to think about what you need."
    return [{"prompt": p.messages, "completion": [{"role": "assistant", "content": answer}]} for p in prompts[:count]]


def _seconds_per_step(arguments: dict, steps: int, rows: list[dict], folder: Path) -> float:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from constitutional.finetuning import load_causal_lm, load_tokenizer
    from constitutional.models.embedded import resolve

    recipe = load_recipe(DEMO_RECIPE)
    settings = recipe.sl_train.model_copy(update={"max_steps": steps, "checkpoint_steps": steps + 1})
    outputs = TrainingOutputs(model_dir=folder / "model", checkpoint_dir=folder / "checkpoints")
    config = trl_config(SFTConfig, settings, outputs, 0, max_length=settings.max_length, disable_tqdm=True)
    for key, value in arguments.items():
        setattr(config, key, value)
    config.save_strategy = "no"
    path = resolve(recipe.models.policy.name)
    trainer = SFTTrainer(
        model=load_causal_lm(path),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(path),
        peft_config=settings.peft_config("CAUSAL_LM"),
    )
    began = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per arm and round")
    parser.add_argument("--rounds", type=int, default=2, help="each arm runs this many times, alternating")
    args = parser.parse_args()
    from trl import SFTConfig

    defaults = SFTConfig(output_dir=tempfile.mkdtemp(), use_cpu=True)
    arms = {
        "TRL defaults": {"bf16": defaults.bf16, "activation_checkpointing": defaults.activation_checkpointing},
        "device_arguments": {key: value for key, value in device_arguments().items() if key != "use_cpu"},
    }
    rows = _rows(64)
    timings: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name, arguments in arms.items():
                timings[name].append(_seconds_per_step(arguments, args.steps, rows, Path(scratch) / f"{name}{round_}"))
    table = Table("arm", "settings", "seconds / step (each round)", "mean")
    for name, arguments in arms.items():
        mean = sum(timings[name]) / len(timings[name])
        table.add_row(name, str(arguments), ", ".join(f"{t:.1f}" for t in timings[name]), f"{mean:.1f}")
    Console().print(table)
    ratio = (sum(timings["TRL defaults"]) / sum(timings["device_arguments"])) if timings["device_arguments"] else 0
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
