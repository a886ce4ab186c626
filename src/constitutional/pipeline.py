"""Runs a recipe's stages in order: SL generate -> SL train -> sample -> label -> PM -> RL -> evaluate -> report.

The pipeline owns each stage's life cycle in the run's manifest; the stage functions only do the work. A stage
is skipped when its output is complete for the same config, resumed when a previous run of the same config
stopped part-way, and redone when its config, or an upstream stage's, changed. Every decision is appended to
`stages.log` in the run directory, so a resumed run shows what it kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from constitutional.errors import InputError
from constitutional.recipe import Recipe
from constitutional.store import RunStore, config_hash

LOG_FILE = "stages.log"
# Pipeline order; `cai run` runs the registered stages in this order whatever order they were registered in.
ORDER = ["sl_generate", "sl_train", "rl_sample", "rl_label", "pm_train", "rl_train", "evaluate", "report"]


@dataclass(frozen=True)
class StageDef:
    name: str
    command: str  # the CLI command that runs this stage alone, for hints
    config: Callable[[Recipe], dict[str, Any]]  # everything the stage's output depends on
    run: Callable[[Recipe, RunStore], dict[str, Any]]  # does the work, returns a summary for the manifest
    after: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    resumable: bool = True  # False for training: a half-finished run has nothing worth keeping


STAGES: dict[str, StageDef] = {}


def stage(name: str, command: str, config: Callable[[Recipe], dict[str, Any]], after=(), resumable=True):
    """Register the decorated `run(recipe, store) -> summary` as a pipeline stage."""

    def register(run: Callable[[Recipe, RunStore], dict[str, Any]]):
        STAGES[name] = StageDef(name, command, config, run, tuple(after), resumable)
        return run

    return register


@dataclass
class Outcome:
    name: str
    action: str  # skipped | ran | resumed | redone
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def _log(store: RunStore, name: str, message: str) -> None:
    line = f"{datetime.now().isoformat(timespec='seconds')} {name:<12} {message}\n"
    with open(store.dir / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(line)


def fingerprint(recipe: Recipe, store: RunStore, definition: StageDef) -> dict[str, Any]:
    """The stage's config plus the config hash of each upstream stage, so upstream changes propagate."""
    upstream = {}
    for name in definition.after:
        status = store.stage(name).status
        if status.get("status") != "complete":
            raise InputError(
                f"stage '{definition.name}' reads the output of '{name}', which is not complete in {store.dir}",
                hint=f"run `{STAGES[name].command}` with the same --config first, or `cai run` for every stage",
            )
        upstream[name] = status["config_hash"]
    return {"config": definition.config(recipe), "upstream": upstream}


def run_stage(recipe: Recipe, store: RunStore, name: str, force: bool = False) -> Outcome:
    definition = STAGES[name]
    stage_dir = store.stage(name)
    config = fingerprint(recipe, store, definition)
    previous = stage_dir.status
    if force and previous:
        stage_dir.reset()
        _log(store, name, "forced: outputs removed")
    elif stage_dir.is_complete(config):
        _log(store, name, "skipped: complete for this config")
        return Outcome(name, "skipped", 0.0, previous.get("summary", {}))
    elif previous and previous.get("config_hash") != config_hash(config):
        stage_dir.reset()
        _log(store, name, "config changed: outputs removed, redoing")
    elif previous and not definition.resumable:
        stage_dir.reset()
        _log(store, name, "interrupted earlier: restarting (training keeps no partial state)")
    action = "resumed" if stage_dir.status else ("redone" if previous and not force else "ran")
    _log(store, name, "resuming from the records on disk" if action == "resumed" else "starting")
    stage_dir.start(config)
    began = time.monotonic()
    summary = definition.run(recipe, store)
    seconds = time.monotonic() - began
    stage_dir.finish(**summary)
    store.update_stage(name, seconds=round(seconds, 1))
    _log(store, name, f"complete in {seconds:.1f} s: {summary}")
    return Outcome(name, action, seconds, summary)


def ordered_stages() -> list[str]:
    return sorted(STAGES, key=ORDER.index)


def run(recipe: Recipe, names: Iterable[str] | None = None, force: Iterable[str] = ()) -> list[Outcome]:
    """Run the named stages (default: all, in pipeline order) against the recipe's run directory."""
    wanted = ordered_stages() if names is None else list(names)
    unknown = [n for n in wanted if n not in STAGES]
    if unknown:
        raise InputError(f"unknown stage(s) {unknown}", hint=f"stages are: {', '.join(STAGES)}")
    forced = set(force)
    with RunStore(recipe.run_dir, recipe.seed) as store:
        return [run_stage(recipe, store, name, name in forced) for name in ordered_stages() if name in wanted]


# ---- the stages, in pipeline order ----------------------------------------------------------------------------


def _sl_config(recipe: Recipe) -> dict[str, Any]:
    from constitutional.constitution import load_constitution

    return {
        "sl": recipe.sl.model_dump(),
        "constitution": load_constitution(recipe.constitution).tag,
        "policy": recipe.models.policy.model_dump(include={"name", "backend", "base_url"}),
        "seed": recipe.seed,
    }


@stage("sl_generate", "cai sl generate", _sl_config)
def _sl_generate(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional import sl
    from constitutional.constitution import load_constitution
    from constitutional.models import load_model

    constitution = load_constitution(recipe.constitution)
    return sl.generate(store, load_model(recipe.models.policy), constitution, recipe.sl, recipe.seed)


def _sl_train_config(recipe: Recipe) -> dict[str, Any]:
    return {"sl_train": recipe.sl_train.model_dump(), "base_model": recipe.models.policy.name, "seed": recipe.seed}


@stage("sl_train", "cai sl train", _sl_train_config, after=["sl_generate"], resumable=False)
def _sl_train(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional import sl_train

    return sl_train.train(store, recipe.models.policy.name, recipe.sl_train, recipe.seed)
