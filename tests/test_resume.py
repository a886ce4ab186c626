"""A `cai sl generate` process killed with SIGKILL mid-generation, then rerun: every id exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from constitutional.records import SLRecord
from constitutional.runview import RunView

PROMPTS = 60


def _ids_on_disk(stage_dir: Path) -> list[str]:
    ids = []
    for shard in sorted(stage_dir.glob("part-*.jsonl")):
        for line in shard.read_text().split("\n"):
            try:
                ids.append(json.loads(line)["id"])
            except json.JSONDecodeError:
                continue  # empty, or torn by the kill
    return ids


def _command(model: Path, prompts: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from constitutional.cli import main; main()",
        "sl",
        "generate",
        "--red-team-prompts",
        str(prompts),
        "--helpful-prompts",
        "null",
        "--num-revisions",
        "2",
        "--chunk-size",
        "2",
        "--num-demonstrations",
        "1",
        "--sampling.max-new-tokens",
        "24",
        "--sampling.stop",
        "[]",
        "--models.policy.name",
        str(model),
        "--models.policy.dtype",
        "float32",
        "--run-dir",
        str(run_dir),
    ]


def test_sigkill_mid_generation_then_rerun_keeps_every_id_exactly_once(tmp_path, tiny_model_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"please help me with task number {i}\n" for i in range(PROMPTS)))
    run_dir = tmp_path / "run"
    stage_dir = run_dir / "sl_generate"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        _command(tiny_model_path, prompts, run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(_ids_on_disk(stage_dir)) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _ids_on_disk(stage_dir)
    assert 4 <= len(before) < PROMPTS, "the kill must land mid-generation for this test to mean anything"
    assert RunView(run_dir).status("sl_generate").status == "running"

    rerun = subprocess.run(_command(tiny_model_path, prompts, run_dir), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _ids_on_disk(stage_dir)
    assert len(after) == PROMPTS and len(set(after)) == PROMPTS
    assert set(before) <= set(after)
    view = RunView(run_dir)
    assert view.is_complete("sl_generate") and view.status("sl_generate").summary["records"] == PROMPTS
    assert sorted(r.id for r in view.records("sl_generate", SLRecord)) == sorted(after)
