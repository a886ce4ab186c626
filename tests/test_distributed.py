"""Multi-process training: SFT, the preference model and RL launched as two CPU processes (gloo) on a tiny model.

Both processes train, only rank 0 writes the run (every write each process makes under the run directory is recorded
by tests/distributed_job.py), and the models match a one-process run with the same global batch (2 processes x 2
sequences = 1 process x 4). Each launch starts two Python processes that import torch and TRL: about 30 s each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from constitutional import distributed, pipeline
from constitutional.models.local_server import free_port
from constitutional.recipe import load_recipe, parse_overrides
from constitutional.records import ComparisonRecord, RevisionStep, SLRecord
from constitutional.runview import RunView
from constitutional.stages.definitions import RL_LABEL, SL_GENERATE
from constitutional.store import RunStore

JOB = Path(__file__).parent / "distributed_job.py"
TRAINING = ["sl_train", "pm_train", "rl_train"]
MODEL_DIRS = {"sl_train": "sl_model", "pm_train": "preference_model", "rl_train": "rl_model"}
LAUNCH_TIMEOUT = 420
# float32 on CPU: two processes add the same gradients in another order (an all-reduce of two halves), which moves
# the last bits. Measured after 3 steps: weights within 2e-7 (SFT, PM) and 1.7e-6 (DPO) of the one-process run, losses
# within 1e-6; a one-process run with half the global batch lands 0.02 away. The weights move 0.03 from the start.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5
# What a rank other than 0 may write: transformers makes each checkpoint folder on every rank to put that rank's RNG
# state in it (read back on resume).
RANK_STATE = re.compile(r"[a-z_]+/checkpoints/checkpoint-\d+(/rng_state_1\.pth)?")


def _only_rank_state(paths: list[str]) -> bool:
    return all(RANK_STATE.fullmatch(path) for path in paths)


def _sl_record(i: int, kind: str) -> SLRecord:
    steps = [RevisionStep(principle="harm", critique="risky", revision=f"I won't help with that, but {i}.")]
    return SLRecord(
        id=f"{kind}-{i}",
        kind=kind,
        prompt=[{"role": "user", "content": f"How do I bake bread {i}?"}],
        initial=f"Mix flour and water {i}.",
        steps=steps if kind == "red_team" else [],
        constitution="harmless@1.0",
        model="scripted",
        params={},
        seed=0,
    )


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
        logprobs=[[-0.1, -2.3]],
        constitution="harmless@1.0",
        model="scripted",
        seed=0,
    )


def _complete(store: RunStore, name: str, records: list) -> None:
    """A finished upstream stage, as the pipeline would have left it."""
    store.start(name, {"config": name})
    writer, _ = store.folder(name).writers()
    writer.write(records)
    writer.close()
    store.finish(name, {"records": len(records)}, 0.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_path) -> tuple[Path, Path]:
    """(recipe, run directory) with SL-CAI records and labelled pairs in place: the training stages can start."""
    folder = tmp_path_factory.mktemp("distributed")
    run_dir = folder / "prepared"
    with RunStore(run_dir) as store:
        _complete(store, SL_GENERATE.name, [_sl_record(i, k) for k in ("red_team", "helpful") for i in range(8)])
        _complete(store, RL_LABEL.name, [_comparison(i) for i in range(16)])
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I tie knot {i}?"}) + "\n" for i in range(4)))
    # No dropout anywhere, so one and two processes draw no random numbers during the forward pass.
    training = {"max_steps": 3, "learning_rate": 5e-3, "checkpoint_steps": 2, "lora_dropout": 0.0}
    recipe = {
        "run_dir": str(run_dir),
        "models": {"policy": {"name": str(tiny_model_path), "dtype": "float32"}},
        "sl_train": {**training, "max_length": 64},
        "pm": {**training, "base_model": str(tiny_model_path), "eval_fraction": 0.25, "max_length": 64},
        "rl": {
            **training,
            "algo": "dpo",
            "start_from": "base",
            "max_length": 64,
            "red_team_prompts": str(prompts),
            "helpful_prompts": None,
            "num_generations": 2,
            "max_completion_length": 4,
        },
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, run_dir


def _copy(run_dir: Path, name: str) -> Path:
    target = run_dir.parent / name
    shutil.copytree(run_dir, target)
    return target


def _per_device_batch(size: int) -> list[str]:
    return [flag for section in ("sl_train", "pm", "rl") for flag in (f"--{section}.batch_size", str(size))]


def _launch(launcher: list[str], recipe: Path, run_dir: Path, args: list[str]) -> tuple[dict[int, list[str]], str]:
    """Run `cai run` as two processes; returns (the paths each rank wrote under the run dir, the combined log)."""
    evidence = run_dir.parent / f"{run_dir.name}-evidence"
    command = [*launcher, str(JOB), str(run_dir), str(evidence), "run", str(recipe), "--run_dir", str(run_dir), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return {rank: json.loads((evidence / f"rank-{rank}.json").read_text()) for rank in (0, 1)}, log


def _accelerate(port: int) -> list[str]:
    # `--cpu` would start a single process; `--multi_gpu` starts two, which use gloo because the trainer's
    # arguments say use_cpu on a machine without a GPU.
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
    ]  # fmt: skip


def _torchrun(port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
    ]  # fmt: skip


def _rank_lines(log: str) -> dict[int, list[str]]:
    return {rank: [line for line in log.splitlines() if f"[rank {rank} of 2]" in line] for rank in (0, 1)}


def _max_difference(a: Path, b: Path) -> float:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


def _losses(run_dir: Path, stage: str) -> list[float]:
    log = json.loads((run_dir / MODEL_DIRS[stage] / "training_log.json").read_text())
    return [entry["loss"] for entry in log if "loss" in entry]


def test_two_processes_under_accelerate_launch_train_like_one_and_only_rank_0_writes(prepared):
    recipe, prepared_dir = prepared
    two = _copy(prepared_dir, "two-processes")
    writes, log = _launch(
        _accelerate(free_port()), recipe, two, ["--stages", ",".join(TRAINING), *_per_device_batch(2)]
    )

    one = _copy(prepared_dir, "one-process")
    overrides = parse_overrides(["--run_dir", str(one), *_per_device_batch(4)], None)
    pipeline.run(load_recipe(recipe, overrides), TRAINING)

    lines = _rank_lines(log)
    for rank in (0, 1):  # each process reports its own training, once per stage
        assert len(lines[rank]) == 3 and all("trained 3 optimizer steps" in line for line in lines[rank]), log
    assert _only_rank_state(writes[1]), f"rank 1 wrote {writes[1]}"
    assert {"manifest.json", "stages.log", *MODEL_DIRS.values()} <= set(writes[0])

    view = RunView(two)
    assert all(view.is_complete(stage) for stage in TRAINING)
    assert view.status("sl_train").summary["steps"] == 3
    completed = [line for line in (two / "stages.log").read_text().splitlines() if " complete in " in line]
    assert len(completed) == 3  # one line per stage, written once
    for stage, folder in MODEL_DIRS.items():
        assert _max_difference(two / folder, one / folder) < WEIGHT_TOLERANCE, stage
        assert _losses(two, stage) == pytest.approx(_losses(one, stage), abs=LOSS_TOLERANCE), stage
        assert not (two / stage / "checkpoints").exists()


def test_rloo_under_torchrun_trains_on_both_ranks_and_only_rank_0_writes(prepared):
    recipe, prepared_dir = prepared
    run_dir = _copy(prepared_dir, "torchrun")
    args = ["--stages", "pm_train,rl_train", "--rl.algo", "rloo", "--rl.max_steps", "2", *_per_device_batch(2)]
    writes, log = _launch(_torchrun(free_port()), recipe, run_dir, args)

    lines = _rank_lines(log)
    assert [len(lines[0]), len(lines[1])] == [2, 2], log
    assert all("trained 2 optimizer steps" in line for line in lines[0] + lines[1] if "RLOO" in line)
    assert _only_rank_state(writes[1]), f"rank 1 wrote {writes[1]}"
    summary = RunView(run_dir).status("rl_train").summary
    assert summary["algo"] == "rloo" and summary["steps"] == 2 and summary["first_reward"] is not None
    assert (run_dir / "rl_model" / "model.safetensors").is_file()


def test_a_launch_of_several_processes_refuses_stages_that_are_not_training(prepared, monkeypatch):
    recipe, _ = prepared
    monkeypatch.setenv("WORLD_SIZE", "2")
    from constitutional.errors import InputError

    with pytest.raises(InputError, match="only training stages run") as err:
        pipeline.run(load_recipe(recipe), ["sl_generate", "sl_train"])
    assert "sl_generate" in str(err.value) and err.value.field == "--stages"


def test_one_process_is_a_launch_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    group_before = torch.distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.share("decided") == "decided"
    distributed.wait_for_everyone()  # returns at once: nothing to wait for
    assert torch.distributed.is_initialized() == group_before  # no process group was started for a launch of one
