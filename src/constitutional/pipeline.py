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
    action: str  # skipped | ran | resumed | redone | restarted
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
    action = "resumed" if previous else "ran"
    if force and previous:
        stage_dir.reset()
        action = "ran"
        _log(store, name, "forced: outputs removed")
    elif stage_dir.is_complete(config):
        _log(store, name, "skipped: complete for this config")
        return Outcome(name, "skipped", 0.0, previous.get("summary", {}))
    elif previous and previous.get("config_hash") != config_hash(config):
        stage_dir.reset()
        action = "redone"
        _log(store, name, "config changed: outputs removed, redoing")
    elif previous and not definition.resumable:
        stage_dir.reset()
        action = "restarted"
        _log(store, name, "interrupted earlier: restarting (training keeps no partial state)")
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

# What identifies a model in a stage's config hash (batch size and dtype change speed, not the records).
_MODEL_KEYS = {"name", "backend", "base_url"}


def _sl_config(recipe: Recipe) -> dict[str, Any]:
    from constitutional.constitution import load_constitution

    return {
        "sl": recipe.sl.model_dump(),
        "constitution": load_constitution(recipe.constitution).tag,
        "policy": recipe.models.policy.model_dump(include=_MODEL_KEYS),
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


def _rl_label_config(recipe: Recipe) -> dict[str, Any]:
    from constitutional.constitution import load_constitution

    return {
        "label": recipe.label.model_dump(),
        "constitution": load_constitution(recipe.constitution).tag,
        "feedback": recipe.models.feedback.model_dump(include=_MODEL_KEYS),
        "seed": recipe.seed,
    }


@stage("rl_label", "cai rl label", _rl_label_config, after=["rl_sample"])
def _rl_label(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional import feedback
    from constitutional.constitution import load_constitution
    from constitutional.models import load_model

    constitution = load_constitution(recipe.constitution)
    return feedback.label(store, load_model(recipe.models.feedback), constitution, recipe.label, recipe.seed)


def _rl_train_config(recipe: Recipe) -> dict[str, Any]:
    return {"rl": recipe.rl.model_dump(), "base_model": recipe.models.policy.name, "seed": recipe.seed}


# After pm_train, which itself follows rl_label: a changed preference model or relabelled pairs redo RL (and DPO).
@stage("rl_train", "cai rl train", _rl_train_config, after=["pm_train"], resumable=False)
def _rl_train(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional import rl

    return rl.train(store, recipe.models.policy.name, recipe.rl, recipe.seed)


def _evaluate_config(recipe: Recipe) -> dict[str, Any]:
    from pathlib import Path

    from constitutional.evaluate.suite import candidate_specs, preference_model_dir

    run_dir = Path(recipe.run_dir)
    candidates = candidate_specs(recipe.models.policy, run_dir, recipe.evaluate.candidates)
    return {
        "evaluate": recipe.evaluate.model_dump(),
        "candidates": {label: spec.model_dump(include=_MODEL_KEYS) for label, spec in candidates.items()},
        "judge": recipe.models.judge.model_dump(include=_MODEL_KEYS),
        "preference_model": preference_model_dir(run_dir) is not None,
        # Every upstream output is optional here (no `after`), but a retrained model or new SL records still
        # make earlier answers and scores stale: their stages' config hashes are part of this stage's config.
        "upstream": _finished_config_hashes(recipe, ORDER[: ORDER.index("evaluate")]),
        "seed": recipe.seed,
    }


@stage("evaluate", "cai eval compare", _evaluate_config)
def _evaluate(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional.evaluate import suite
    from constitutional.models import load_model

    candidates = suite.candidate_specs(recipe.models.policy, store.dir, recipe.evaluate.candidates)
    return suite.evaluate(store, recipe.evaluate, candidates, recipe.models.judge, recipe.seed, load_model)


def _finished_config_hashes(recipe: Recipe, names: list[str]) -> dict[str, str | None]:
    """Upstream stages' config hashes read from the manifest, for stages whose upstream is optional."""
    import json
    from pathlib import Path

    manifest = Path(recipe.run_dir) / "manifest.json"
    stages = json.loads(manifest.read_text(encoding="utf-8"))["stages"] if manifest.exists() else {}
    return {
        name: stages[name].get("config_hash") if stages.get(name, {}).get("status") == "complete" else None
        for name in names
    }


def _rl_sample_config(recipe: Recipe) -> dict[str, Any]:
    from constitutional.constitution import load_constitution
    from constitutional.pairs import policy_spec

    policy = policy_spec(recipe.models.policy, recipe.run_dir, recipe.sample.policy)
    uses_sl_model = policy.name != recipe.models.policy.name
    return {
        "sample": recipe.sample.model_dump(),
        "constitution": load_constitution(recipe.constitution).tag,
        "policy": policy.model_dump(include=_MODEL_KEYS),
        # The SL-CAI model is optional upstream (no `after`), but when it answers, retraining it redoes the pairs.
        "sl_train": _finished_config_hashes(recipe, ["sl_train"])["sl_train"] if uses_sl_model else None,
        "seed": recipe.seed,
    }


@stage("rl_sample", "cai rl sample", _rl_sample_config)
def _rl_sample(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional import pairs
    from constitutional.constitution import load_constitution
    from constitutional.models import load_model

    policy = load_model(pairs.policy_spec(recipe.models.policy, store.dir, recipe.sample.policy))
    tag = load_constitution(recipe.constitution).tag
    return pairs.sample(store, policy, tag, recipe.sample, recipe.seed)


def _pm_train_config(recipe: Recipe) -> dict[str, Any]:
    import hashlib
    from pathlib import Path

    data = recipe.pm.preference_data
    if data is None:
        upstream = _finished_config_hashes(recipe, ["rl_label"])["rl_label"]
        if upstream is None:
            raise InputError(
                f"stage 'pm_train' reads the output of 'rl_label', which is not complete in {recipe.run_dir}",
                hint="run `cai rl label` with the same --config first, or train on a file with --preference-data",
            )
    elif not Path(data).is_file():
        raise InputError("preference data file not found", path=data, field="pm.preference_data")
    else:
        upstream = hashlib.sha256(Path(data).read_bytes()).hexdigest()[:16]  # a changed file retrains
    return {"pm": recipe.pm.model_dump(), "data": upstream, "seed": recipe.seed}


# No `after`: imported preference data needs no labelling stage; the run's labels enter through the config's hash.
@stage("pm_train", "cai pm train", _pm_train_config, resumable=False)
def _pm_train(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional import preference

    return preference.train(store, recipe.pm, recipe.seed)


def _report_config(recipe: Recipe) -> dict[str, Any]:
    return {}  # the report has no settings; it is redone whenever the evaluation it shows changes


@stage("report", "cai report RUN_DIR", _report_config, after=["evaluate"], resumable=False)
def _report(recipe: Recipe, store: RunStore) -> dict[str, Any]:
    from constitutional.evaluate import report

    return report.write_report(store.dir)
