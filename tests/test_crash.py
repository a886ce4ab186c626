"""Crash consistency of every record stage: `python -m constitutional.cli` killed with SIGKILL at seeded points
(after k records are on disk), then rerun to the end. Every id is on disk exactly once, every line a writer
finished parses, the manifest says complete.

The stages run on tiny random models built here, so a run takes seconds; the records are not meant to be good.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from constitutional import pipeline
from constitutional.recipe import load_recipe
from constitutional.records import ComparisonRecord, EvalRecord, PairRecord, RejectedRecord, SLRecord
from constitutional.runview import RunView
from constitutional.sources import load_prompts

PROMPTS = 10  # red-team prompts; the evaluation also answers HELPFUL helpfulness prompts
HELPFUL = 4
KILLS = 2  # kill points per stage, drawn with a seed per stage
WAIT = 180.0  # seconds a run may take to reach a kill point on a busy machine


@dataclass(frozen=True)
class Case:
    stage: str
    command: tuple[str, ...]
    record: type[BaseModel]  # what its part-*.jsonl lines hold
    upstream: tuple[str, ...] = ()  # stages run (uninterrupted) first

    def expected_ids(self, files: dict[str, Path], run_dir: Path) -> set[str]:
        """The ids the stage must end with: one per prompt (a record or a rejection), one per pair for the labels;
        for the evaluation, one answer per prompt (its judgements of those answers come on top)."""
        red = {p.id for p in load_prompts(str(files["red"]))[0]}
        if self.stage == "rl_label":
            return {pair.id for pair in RunView(run_dir).records("rl_sample", PairRecord)}
        if self.stage == "evaluate":
            helpful = {p.id for p in load_prompts(str(files["helpful"]))[0]}
            return {f"answer:base:t1:{i}" for i in red | helpful}
        return red


CASES = [
    Case("sl_generate", ("sl", "generate"), SLRecord),
    Case("rl_sample", ("rl", "sample"), PairRecord),
    Case("rl_label", ("rl", "label"), ComparisonRecord, upstream=("rl_sample",)),
    Case("evaluate", ("eval", "compare"), EvalRecord),
]


@pytest.fixture
def models(tiny_model_path, tiny_base_model_path) -> dict[str, Path]:
    return {"chat": tiny_model_path, "base": tiny_base_model_path}


def _recipe(tmp_path: Path, models: dict[str, Path]) -> dict[str, Path]:
    files = {"red": tmp_path / "red.txt", "helpful": tmp_path / "helpful.txt", "recipe": tmp_path / "recipe.yaml"}
    files["red"].write_text("".join(f"please help me with task number {i}\n" for i in range(PROMPTS)))
    files["helpful"].write_text("".join(f"how do I bake loaf {i}?\n" for i in range(HELPFUL)))
    # Chunks of one record, so every record is its own write and a kill can land between any two.
    short = {"max_new_tokens": 6, "stop": []}
    model = {"dtype": "float32", "device": "cpu", "batch_size": 4}
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "models": {
            "policy": {"name": str(models["chat"]), **model},
            "feedback": {"name": str(models["base"]), **model},
            "judge": {"name": str(models["base"]), **model},
        },
        "sl": {
            "red_team_prompts": str(files["red"]),
            "helpful_prompts": None,
            "num_revisions": 1,
            "num_demonstrations": 0,
            "chunk_size": 1,
            "sampling": short,
        },
        "sample": {
            "policy": "policy",
            "red_team_prompts": str(files["red"]),
            "helpful_prompts": None,
            "chunk_size": 1,
            "sampling": short,
        },
        "label": {"chunk_size": 1, "num_demonstrations": 0, "debias": True, "num_principles": 2},
        "evaluate": {
            "red_team_prompts": str(files["red"]),
            "helpful_prompts": str(files["helpful"]),
            "temperatures": [1.0],
            "chunk_size": 1,
            "sampling": short,
            "judge_items": None,
            "revision_records": 0,
            "bootstrap": 10,
        },
    }
    files["recipe"].write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return files


def _cai(*args: str) -> list[str]:
    return [sys.executable, "-m", "constitutional.cli", *args]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "CAI_DEBUG": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "0"}


@dataclass
class Shard:
    path: Path
    ids: list[str]  # every record whose line parses, in order
    torn: bool  # ends in an unterminated fragment that is not a record


def _shards(folder: Path, record: type[BaseModel]) -> list[Shard]:
    """Every shard of a stage folder, read line by line; a line a writer finished (newline-terminated) must parse."""
    shards = []
    for path in sorted(folder.glob("part-*.jsonl")) + sorted(folder.glob("rejected-*.jsonl")):
        model = record if path.name.startswith("part-") else RejectedRecord
        *lines, tail = path.read_text(encoding="utf-8").split("\n")
        ids = []
        for number, line in enumerate(lines, start=1):
            try:
                ids.append(model.model_validate_json(line).id)
            except ValidationError as err:
                raise AssertionError(f"{path.name}:{number} does not parse: {line[:200]!r}") from err
        torn = False
        if tail:
            try:
                ids.append(model.model_validate_json(tail).id)  # killed after the record, before its newline
            except ValidationError:
                torn = True
        shards.append(Shard(path, ids, torn))
    return shards


def _done(folder: Path) -> int:
    """Records and rejections written whole so far (cheap: the poll must not slow the run it watches)."""
    shards = [*folder.glob("part-*.jsonl"), *folder.glob("rejected-*.jsonl")] if folder.is_dir() else []
    return sum(path.read_bytes().count(b"\n") for path in shards)


def _kill_at(command: list[str], folder: Path, count: int, log: Path) -> int:
    """Start the command, SIGKILL it once `count` records are on disk; returns its pid."""
    with log.open("a") as output:
        process = subprocess.Popen(command, env=ENV, stdout=output, stderr=output)
    deadline = time.monotonic() + WAIT
    while _done(folder) < count and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    finished = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not finished, f"the run ended before the kill at {count} records:\n{log.read_text()[-3000:]}"
    assert _done(folder) >= count, f"no kill point within {WAIT} s:\n{log.read_text()[-3000:]}"
    return process.pid


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.stage)
def test_a_stage_killed_at_seeded_points_then_rerun_ends_with_every_id_exactly_once(case, tmp_path, models):
    files = _recipe(tmp_path, models)
    run_dir, folder = tmp_path / "run", tmp_path / "run" / case.stage
    command = _cai(*case.command, "--config", str(files["recipe"]))
    log = tmp_path / "cai.log"
    if case.upstream:  # uninterrupted, in one batch: only its records matter here
        recipe = load_recipe(files["recipe"])
        pipeline.run(
            recipe.model_copy(update={"sample": recipe.sample.model_copy(update={"chunk_size": 32})}), case.upstream
        )
    expected = case.expected_ids(files, run_dir)
    points = sorted(random.Random(case.stage).sample(range(1, len(expected) - 2), KILLS))

    killed = set()
    for count in points:
        killed.add(_kill_at(command, folder, count, log))
        assert RunView(run_dir).status(case.stage).status == "running"
        ids = [i for shard in _shards(folder, case.record) for i in shard.ids]
        assert len(ids) == len(set(ids)), "a record was written twice before the end"

    final = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    shards = _shards(folder, case.record)
    # Only a killed writer can have left a fragment, and nobody appends to its shard again.
    assert all(int(s.path.stem.rsplit("-", 1)[1]) in killed for s in shards if s.torn)
    ids = [i for shard in shards for i in shard.ids]
    assert len(ids) == len(set(ids)), "an id is on disk twice"
    assert expected <= set(ids)
    if case.stage != "evaluate":  # the evaluation also writes judgements of those answers, under their own ids
        assert set(ids) == expected
    view = RunView(run_dir)
    assert view.is_complete(case.stage)
    assert json.loads((run_dir / "manifest.json").read_text())["stages"][case.stage]["status"] == "complete"
    assert not (run_dir / "manifest.json.tmp").exists()
    assert {r.id for r in view.records(case.stage, case.record)} | {r.id for r in view.rejected(case.stage)} == set(
        ids
    )
