"""Several processes training one model (`accelerate launch`, `torchrun`): who writes, and where they wait.

Under a multi-process launch every process runs the same training stage and trains: the trainer gives each one its
share of every global batch and averages their gradients. Only the main process (rank 0) writes the run: the
manifest, `stages.log`, the model folder and its card. The others read the run and write nothing of it, except the
RNG state transformers keeps per rank inside a checkpoint, which a resumed run reads back.

The launcher's environment says how many processes there are (`WORLD_SIZE` and `RANK`, set by torchrun and by
accelerate launch, which starts torchrun). A single process is a launch of one: nothing here imports torch or waits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from constitutional.runview import RunView, StageStatus
from constitutional.store import StageFolder

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _state():
    """accelerate's view of the launch, which also joins the process group the trainer will use.

    On a machine without a GPU it must be told to use the CPU (gloo), as the trainer is (`use_cpu`): asked for the
    default, it would see no GPU and quietly treat the launch as one process.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world_size():
        raise RuntimeError(
            f"the launcher started {world_size()} processes (WORLD_SIZE), but accelerate sees {state.num_processes}"
        )
    return state


def wait_for_everyone() -> None:
    """Every process waits here until all have arrived."""
    if world_size() > 1:
        _state().wait_for_everyone()


def share(value: T) -> T:
    """The main process's `value`, on every process (the others' own values are ignored)."""
    if world_size() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([value], from_process=0)[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (it may clean up), then the others (they find it cleaned up)."""
    if not is_main():
        wait_for_everyone()
    yield
    if is_main():
        wait_for_everyone()


@contextlib.contextmanager
def full_weights(model: Any) -> Iterator[None]:
    """The whole model on every process for the block: DeepSpeed ZeRO-3 keeps only a slice of each weight per
    process, so they are gathered for a save (every process must enter). Anything else holds its whole weights."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def report(stage: str, steps: int, loss: float | None) -> None:
    """One line per process after training, so a launch's log shows that each process trained (the trainer's own
    logs come from the main process only)."""
    if world_size() == 1:
        return
    from rich.console import Console

    last = "n/a" if loss is None else f"{loss:.4f}"
    Console(stderr=True).print(
        f"[rank {rank()} of {world_size()}] {stage}: trained {steps} optimizer steps (last loss, mean over ranks: "
        f"{last})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


class ReadOnlyRun:
    """The run as a process other than the main one sees it: what the main process wrote, read from disk; no lock,
    and nothing written (the stage's records come from here, its outputs are written by the main process)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)

    def status(self, name: str) -> StageStatus | None:
        return RunView(self.dir).status(name)

    def folder(self, relative: str) -> StageFolder:
        return StageFolder(self.dir / relative)
