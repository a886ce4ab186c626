"""Started by tests/test_distributed.py under `accelerate launch` or `torchrun`: runs `cai ARGS...` in this process and
records every file this process creates, changes or removes under the run directory.

    distributed_job.py RUN_DIR EVIDENCE_DIR cai-args...

At exit it writes EVIDENCE_DIR/rank-N.json: the paths written (relative to RUN_DIR). Python's audit hooks see every
open for writing, rename, removal and new folder made from Python; the trainers' own file writes go through them,
but weights written by native code (safetensors, torch.save) do not, so the list is a lower bound.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

RUN_DIR = Path(sys.argv[1]).resolve()
EVIDENCE = Path(sys.argv[2])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}
MOVE_EVENTS = {"os.rename", "shutil.move"}  # os.replace raises os.rename; both name (source, destination)
written: set[str] = set()


def _note(path) -> None:
    if isinstance(path, int):
        return  # a file descriptor: its path was noted when it was opened
    absolute = Path(os.fsdecode(path)).absolute()
    if absolute.is_relative_to(RUN_DIR):
        written.add(absolute.relative_to(RUN_DIR).as_posix())


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS):
            _note(path)
    elif event in PATH_EVENTS:
        _note(args[0])
    elif event in MOVE_EVENTS:
        _note(args[0])
        _note(args[1])


def _save_evidence() -> None:
    EVIDENCE.mkdir(parents=True, exist_ok=True)
    (EVIDENCE / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(sorted(written)))


atexit.register(_save_evidence)
sys.addaudithook(_audit)

if __name__ == "__main__":
    from constitutional.cli import main

    sys.argv = ["cai", *sys.argv[3:]]
    main()
