"""Runs a recipe's stage definitions in order: skip what is complete, resume what was stopped, redo what changed.

A stage is complete only when the manifest says so for the same fingerprint. One stopped part-way resumes from
its records or from its last training checkpoint (as its definition says); one whose fingerprint changed, or that
keeps no partial state, has everything it owns removed and runs again. Every decision is appended to
`stages.log` in the run directory. Inputs are validated before the run directory is touched: the recipe, every
input file each stage reads, the models it loads (as far as can be told without loading them), and its upstream.
A stage that stops before writing anything leaves the manifest as it found it, and a run directory this call
created is removed again if no stage did any work in it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from constitutional import distributed
from constitutional.errors import InputError
from constitutional.models import ModelSpec
from constitutional.recipe import Recipe
from constitutional.runview import MANIFEST, RunView
from constitutional.stages import STAGES, Context, StageDef, local_fingerprint, upstream_hashes
from constitutional.stages.base import model_key
from constitutional.store import RunStore, config_hash, remove_if_unused

LOG_FILE = "stages.log"


@dataclass
class Outcome:
    name: str
    action: str  # skipped | ran | resumed | redone | restarted
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def _log(store: RunStore, name: str, message: str) -> None:
    line = f"{datetime.now().isoformat(timespec='seconds')} {name:<12} {message}\n"
    with open(store.dir / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(line)


def _decide(store: RunStore, stage: StageDef, fingerprint: dict[str, Any], force: bool) -> str:
    """What to do with the stage, after removing whatever of its old outputs cannot be kept."""
    previous = store.status(stage.name)
    if previous is None:
        return "ran"
    if force:
        store.reset(stage.name, stage.owned())
        _log(store, stage.name, "forced: every output removed")
        return "ran"
    if previous.config_hash != config_hash(fingerprint):
        store.reset(stage.name, stage.owned())
        _log(store, stage.name, "fingerprint changed: every output removed, redoing")
        return "redone"
    if previous.complete:
        return "skipped"
    if stage.resume == "restart":
        store.reset(stage.name, stage.owned())
        _log(store, stage.name, "interrupted earlier: restarting (it keeps no partial state)")
        return "restarted"
    return "resumed"


def run_stage(recipe: Recipe, store: RunStore, stage: StageDef, local: dict[str, Any], force: bool) -> Outcome:
    fingerprint = {**local, "upstream": upstream_hashes(recipe, stage, store)}
    action = _decide(store, stage, fingerprint, force)
    if action == "skipped":
        _log(store, stage.name, "skipped: complete for this fingerprint")
        distributed.share(action)
        return Outcome(stage.name, action, 0.0, store.status(stage.name).summary)
    if action == "resumed":
        source = "the last training checkpoint" if stage.resume == "checkpoint" else "the records on disk"
        _log(store, stage.name, f"resuming from {source}")
    else:
        _log(store, stage.name, "starting")
    previous = store.status(stage.name)
    store.start(stage.name, fingerprint)
    distributed.share(action)  # the other processes of a multi-process launch follow this decision
    began = time.monotonic()
    try:
        summary = stage.run(recipe, Context(store, stage))
    except BaseException as err:
        _abandon(store, stage, previous, err)
        raise
    seconds = time.monotonic() - began
    if summary.get("resumed_from_step"):
        _log(store, stage.name, f"resumed from checkpoint step {summary['resumed_from_step']}")
    store.finish(stage.name, summary, seconds)
    _log(store, stage.name, f"complete in {seconds:.1f} s: {summary}")
    return Outcome(stage.name, action, seconds, summary)


def _follow_stage(recipe: Recipe, run: distributed.ReadOnlyRun, stage: StageDef) -> Outcome:
    """A process other than the main one in a multi-process launch: it does what the main process decided (skip or
    run the stage, in which case it trains alongside), and writes nothing of the run itself."""
    action = distributed.share(None)
    if action == "skipped":
        return Outcome(stage.name, action, 0.0)
    began = time.monotonic()
    summary = stage.run(recipe, Context(run, stage))
    return Outcome(stage.name, action, time.monotonic() - began, summary)


def _only_training_in_launch(stages: list[StageDef]) -> None:
    """Several processes split the work of a training stage; any other stage would be done by each of them."""
    others = [stage.name for stage in stages if stage.resume != "checkpoint"]
    if distributed.world_size() > 1 and others:
        raise InputError(
            f"{distributed.world_size()} processes were launched, and only training stages run in a multi-process "
            f"launch; {', '.join(others)} would be done once per process",
            field="--stages",
            hint="run those stages as one process (`cai run RECIPE --stages ...`; generation scales through a "
            "vLLM server), and launch only the training stages: --stages sl_train,pm_train,rl_train",
        )


def _abandon(store: RunStore, stage: StageDef, previous, err: BaseException) -> None:
    """A stage that failed before writing anything goes back to its old manifest entry (none, or `running`)."""
    try:
        if store.abandon(stage.name, previous, stage.owned()):
            _log(store, stage.name, f"stopped before writing anything ({type(err).__name__}): manifest as before")
    except OSError:
        pass  # the directory cannot be written to: the original error says more than this one


def wanted_stages(names: Iterable[str] | None, registry: dict[str, StageDef]) -> list[StageDef]:
    order = list(registry)
    wanted = order if names is None else list(names)
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        raise InputError(f"unknown stage(s) {unknown}", field="--stages", hint=f"stages are: {', '.join(order)}")
    return [registry[name] for name in order if name in wanted]


def check_upstream(recipe: Recipe, stages: list[StageDef]) -> None:
    """Every stage's required upstream is complete already or runs first in this call, else say which command."""
    run_dir = Path(recipe.run_dir)
    existing = RunView(run_dir) if (run_dir / MANIFEST).is_file() else None
    planned = {stage.name for stage in stages}
    for stage in stages:
        for upstream in stage.needs(recipe):
            if upstream.name not in planned and not (existing and existing.is_complete(upstream.name)):
                raise InputError(
                    f"stage '{stage.name}' reads the output of '{upstream.name}', which is not complete in {run_dir}",
                    hint=f"run `{upstream.cli}` with the same --config first, or `cai run` for every stage",
                )


def stage_models(recipe: Recipe, stage: StageDef) -> list[tuple[str, ModelSpec]]:
    """(recipe field, spec) of every model the stage loads: each role its fingerprint names, and the models its
    own section names (evaluation candidates, a preference model's base)."""
    config = stage.config(recipe)
    found = [(f"models.{role}", spec) for role, spec in recipe.models if model_key(spec) in config.values()]
    section = getattr(recipe, stage.section, None) if stage.section else None
    for label, spec in (getattr(section, "candidates", None) or {}).items():
        found.append((f"{stage.section}.candidates.{label}", spec))
    base = getattr(section, "base_model", None)
    if isinstance(base, str):
        found.append((f"{stage.section}.base_model", ModelSpec(name=base)))
    return found


def check_input_files(recipe: Recipe, stage: StageDef) -> None:
    """Every input file of the stage parses and holds something to work on. Reads, writes nothing."""
    from constitutional.preference import load_preference_file
    from constitutional.sources import load_prompts

    section = getattr(recipe, stage.section, None) if stage.section else None
    for source in stage.inputs(recipe):
        if source is None:
            continue
        if source == getattr(section, "preference_data", None):
            load_preference_file(source)
        else:
            column = getattr(section, "prompt_column", "prompt")
            load_prompts(source, column, getattr(section, "max_prompt_chars", 2000))


def _check_inputs(recipe: Recipe, stages: list[StageDef]) -> None:
    """Every input file parses and holds something to work on; every model can be found. Reads, writes nothing."""
    from constitutional.models import check_model

    run_dir = Path(recipe.run_dir).absolute()
    for stage in stages:
        check_input_files(recipe, stage)
        for place, spec in stage_models(recipe, stage):
            # A model a stage of this run writes is checked when it is loaded.
            if not Path(spec.name).absolute().is_relative_to(run_dir):
                check_model(spec, place)


def run(
    recipe: Recipe,
    names: Iterable[str] | None = None,
    force: Iterable[str] = (),
    registry: dict[str, StageDef] = STAGES,
) -> list[Outcome]:
    """Run the named stages (default: all, in pipeline order) against the recipe's run directory. `registry` is
    the pipeline they belong to: the CAI stages, or the classifier stages (`stages.CLASSIFIER_STAGES`)."""
    stages = wanted_stages(names, registry)
    _only_training_in_launch(stages)
    forced = set(force)
    # Each stage's config, templates, input files, models and upstream are checked before anything is written.
    local = {stage.name: local_fingerprint(recipe, stage) for stage in stages}
    _check_inputs(recipe, stages)
    check_upstream(recipe, stages)
    if not distributed.is_main():
        run = distributed.ReadOnlyRun(recipe.run_dir)
        return [_follow_stage(recipe, run, s) for s in stages]
    fresh = not Path(recipe.run_dir).exists()
    try:
        with RunStore(recipe.run_dir, recipe.seed) as store:
            return [run_stage(recipe, store, s, local[s.name], s.name in forced) for s in stages]
    except BaseException:
        if fresh:
            with contextlib.suppress(OSError, InputError):
                remove_if_unused(recipe.run_dir)
        raise
