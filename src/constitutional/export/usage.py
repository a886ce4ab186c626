"""What `cai export` writes beside the data so it can be used at once: a reward file for the framework, bound to
the export's reward.json by absolute path, and a README with the framework's commands, paths filled in."""

from __future__ import annotations

from pathlib import Path

REWARD_SPEC_FILE = "reward.json"

REWARD_MODULES = {
    "trl": (
        "trl_reward.py",
        '"""TRL reward for {run}, written by `cai export`: reward_funcs=[reward] in GRPOTrainer or RLOOTrainer."""\n'
        "\nfrom constitutional.export.trl_reward import ConstitutionalReward\n"
        "\nreward = ConstitutionalReward({spec})\n",
    ),
    "verl": (
        "verl_reward.py",
        '"""verl reward for {run}, written by `cai export`: reward.custom_reward_function.path=<this file>, name\n'
        'compute_score (or compute_score_batch with verl\'s batch reward manager)."""\n'
        "\nimport functools\n\nfrom constitutional.export import verl_reward\n"
        "\ncompute_score = functools.partial(verl_reward.compute_score, reward={spec})\n"
        "compute_score_batch = functools.partial(verl_reward.compute_score_batch, reward={spec})\n",
    ),
    "openrlhf": (
        "openrlhf_reward.py",
        '"""OpenRLHF reward for {run}, written by `cai export`: --reward.remote_url <this file>."""\n'
        "\nimport functools\n\nfrom constitutional.export import openrlhf_reward\n"
        "\nreward_func = functools.partial(openrlhf_reward.reward_func, reward={spec})\n",
    ),
}

DATA_USAGE = {
    "trl": """\
Each folder is a Hugging Face dataset (splits from the file names):

```python
from datasets import load_dataset
sft = load_dataset("{dir}/sft")                # SFTTrainer: "messages"
preference = load_dataset("{dir}/preference")  # RewardTrainer / DPOTrainer: "prompt", "chosen", "rejected"
prompts = load_dataset("{dir}/prompts")        # GRPOTrainer / RLOOTrainer: "prompt"
```

`p_chosen` is the feedback model's soft label; `id` is our record id.
""",
    "verl": """\
```bash
python -m verl.trainer.main_ppo \\
  data.train_files={dir}/prompts/train.{ext} data.val_files={dir}/prompts/{val}.{ext} \\
  reward.custom_reward_function.path={dir}/verl_reward.py reward.custom_reward_function.name=compute_score ...
torchrun -m verl.trainer.sft_trainer data.train_files={dir}/sft/train.{ext} data.messages_key=messages ...
```

`constitutional` must be installed where verl's reward workers run.
""",
    "openrlhf": """\
```bash
python -m openrlhf.cli.train_ppo_ray --data.prompt_dataset {dir}/prompts \\
  --data.input_key input --data.label_key label --data.apply_chat_template \\
  --reward.remote_url {dir}/openrlhf_reward.py ...      # or: cai reward serve {dir}/reward.json --port 5000
                                                        #     --reward.remote_url http://127.0.0.1:5000/get_reward
python -m openrlhf.cli.train_rm --data.dataset {dir}/preference --data.prompt_key prompt \\
  --data.chosen_key chosen --data.rejected_key rejected --data.apply_chat_template ...
python -m openrlhf.cli.train_sft --data.dataset {dir}/sft --data.input_key input --data.output_key output \\
  --data.apply_chat_template ...
```

OpenRLHF's reward-model trainer takes hard pairs; the soft label stays in `p_chosen`.
""",
}


def write_reward_module(directory: Path, fmt: str, final_dir: Path, run_dir: Path) -> str:
    """The framework's reward file, bound to reward.json at its final absolute path; returns its file name."""
    name, template = REWARD_MODULES[fmt]
    spec = repr((final_dir / REWARD_SPEC_FILE).as_posix())  # a Python literal, whatever the path holds
    (directory / name).write_text(template.format(run=run_dir.name, spec=spec), encoding="utf-8")
    return name


def readme(fmt: str, final_dir: Path, run_dir: Path, ext: str, splits: list[str], reward: str | None) -> str:
    lines = [
        f"# {fmt} export of {run_dir.as_posix()}",
        "",
        "Written by `cai export`; `export.json` says what was read and how many rows each file holds.",
        "",
        # verl validates on a file of its own; without a test split it can only be pointed at the training file.
        DATA_USAGE[fmt].format(dir=final_dir.as_posix(), ext=ext, val="test" if "test" in splits else "train"),
    ]
    if reward is None:
        lines.append("No reward was exported: rerun `cai export` with `--reward pm` or `--reward judge`.\n")
    else:
        lines.append(f"Reward: {reward} (`{REWARD_SPEC_FILE}`), in `{REWARD_MODULES[fmt][0]}`.\n")
    return "\n".join(lines)
