"""`cai export`: a run's rows in one framework's format, with a manifest, a README and (optionally) a reward.

The export is assembled in a hidden folder beside the target and moved into place at the end, so an interrupted
export leaves nothing half-written. The run itself is only read. A previous export in the target is replaced only
when asked (`force`); a folder holding anything else is never written into.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from constitutional import __version__
from constitutional.errors import InputError
from constitutional.export.formats import DEFAULT_FILE_TYPE, TABLE_MAKERS, TABLES, FileType, Format
from constitutional.export.scorers import JudgeReward, PreferenceModelReward
from constitutional.export.source import RunRows, preference_model_dir, read_run, stage_provenance
from constitutional.export.usage import REWARD_SPEC_FILE, readme, write_reward_module
from constitutional.records import SCHEMA_VERSION
from constitutional.runs import write_rows
from constitutional.runview import RunView
from constitutional.stages.definitions import PM_TRAIN, RL_LABEL, SL_GENERATE

EXPORT_MANIFEST = "export.json"
RewardChoice = Literal["auto", "pm", "judge", "none"]


class ExportManifest(BaseModel):
    """DIR/export.json: where the data came from and what was written."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    format: Format
    created: float
    version: str = Field(description="The version of constitutional that wrote the export.")
    source: str = Field(description="The run directory read (absolute path).")
    seed: int = Field(description="The run's seed; it also seeds the split.")
    test_share: float
    stages: dict[str, dict[str, str]] = Field(description="Status and config hash of each stage read.")
    files: dict[str, int] = Field(description="Each data file (relative path) and its number of rows.")
    counts: dict[str, int] = Field(description="Rows per table, all splits together.")
    not_written: dict[str, str] = Field(description="Tables left out, and why.")
    prompts_without_reference: int = Field(
        description="Prompts the run has no answer to: a judge comparing against the reference cannot score them."
    )
    reward: dict[str, Any] | None = Field(description="The reward written to reward.json, or None.")
    reward_module: str | None = Field(description="The framework's reward file, bound to reward.json.")


def reward_spec(
    choice: RewardChoice, run_dir: Path, recipe: Path | None, mode: Literal["compare", "rate"]
) -> PreferenceModelReward | JudgeReward | None:
    """The reward to export: the run's preference model (`auto` when there is one), or the recipe's judge."""
    if choice == "none":
        return None
    if choice in ("auto", "pm"):
        model_dir = preference_model_dir(run_dir)
        if model_dir is None and choice == "pm":
            raise InputError(
                "the run has no trained preference model", path=run_dir, hint=f"run `{PM_TRAIN.cli}` first"
            )
        return None if model_dir is None else PreferenceModelReward(path=str(model_dir.resolve()))
    from constitutional.recipe import load_recipe

    loaded = load_recipe(recipe)
    judge = loaded.models.judge
    if Path(judge.name).exists():  # a local folder: the reward file may be used from another directory
        judge = judge.model_copy(update={"name": str(Path(judge.name).resolve())})
    constitution = loaded.constitution
    if Path(constitution).is_file():
        constitution = str(Path(constitution).resolve())
    return JudgeReward(
        model=judge,
        constitution=constitution,
        mode=mode,
        # The labelling settings (principles per question, both orders, demonstrations), minus a chain of thought.
        feedback=loaded.label.model_copy(update={"cot": False}),
        seed=loaded.seed,
    )


def _check_target(target: Path, run_dir: Path, force: bool) -> None:
    if target.resolve().is_relative_to(run_dir.resolve()):
        raise InputError(
            "the export would be written inside the run directory, which exporting only reads",
            path=target,
            hint="choose a --to folder outside the run",
        )
    if target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder", path=target, hint="choose another --to folder")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / EXPORT_MANIFEST).is_file():
        raise InputError(
            f"holds files but no {EXPORT_MANIFEST}: it is not an earlier export",
            path=target,
            hint="choose a new or empty --to folder; exports never write into other folders",
        )
    if not force:
        raise InputError("holds an earlier export", path=target, hint="pass --force to replace it, or choose another")


def _not_written(fmt: str, counts: Counter) -> dict[str, str]:
    reasons = {
        "sft": f"the run has no SL-CAI records (`{SL_GENERATE.cli}`)",
        "preference": f"the run has no labelled pairs (`{RL_LABEL.cli}`)",
        "prompts": "the run has no prompts",
    }
    if fmt == "verl":
        reasons["preference"] = "verl trains no reward model from preference pairs"
    return {table: reasons[table] for table in TABLES if not counts[table]}


def _write_tables(
    folder: Path, fmt: str, rows: RunRows, test_share: float, seed: int, file_type: FileType
) -> tuple[dict[str, int], Counter]:
    import datasets

    files: dict[str, int] = {}
    counts: Counter = Counter()
    # One bar per small file from `datasets` says nothing; the command prints the files and their rows instead.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for split, part in rows.split(test_share, seed).items():
            for table, table_rows in TABLE_MAKERS[fmt](part, split).items():
                if not table_rows:
                    continue
                relative = f"{table}/{split}.{file_type}"
                (folder / table).mkdir(exist_ok=True)
                write_rows(table_rows, folder / relative, file_type)
                files[relative] = len(table_rows)
                counts[table] += len(table_rows)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return files, counts


def export_run(
    run_dir: str | Path,
    fmt: Format,
    to: str | Path,
    *,
    file_type: FileType | None = None,
    test_share: float = 0.1,
    reward: PreferenceModelReward | JudgeReward | None = None,
    force: bool = False,
) -> ExportManifest:
    """Write the run's prompts, SFT rows and preferences for `fmt` into `to`; returns what was written."""
    if not 0 <= test_share < 1:
        raise InputError(f"test share {test_share} is not in [0, 1)", field="test_share")
    run_dir, target = Path(run_dir), Path(to)
    view = RunView(run_dir)
    rows = read_run(run_dir)
    _check_target(target, run_dir, force)
    file_type = file_type or DEFAULT_FILE_TYPE[fmt]
    seed = view.manifest.seed
    final = target.resolve()
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        files, counts = _write_tables(staging, fmt, rows, test_share, seed, file_type)
        module = None
        if reward is not None:
            (staging / REWARD_SPEC_FILE).write_text(reward.model_dump_json(indent=2) + "\n", encoding="utf-8")
            module = write_reward_module(staging, fmt, final, view.dir.resolve())
        splits = sorted({Path(name).stem for name in files})
        text = readme(fmt, final, view.dir.resolve(), file_type, splits, None if reward is None else reward.scorer)
        (staging / "README.md").write_text(text, encoding="utf-8")
        manifest = ExportManifest(
            format=fmt,
            created=time.time(),
            version=__version__,
            source=str(view.dir.resolve()),
            seed=seed,
            test_share=test_share,
            stages=stage_provenance(run_dir),
            files=files,
            counts={table: counts[table] for table in TABLES},
            not_written=_not_written(fmt, counts),
            prompts_without_reference=sum(1 for p in rows.prompts if not p.reference),
            reward=None if reward is None else reward.model_dump(),
            reward_module=module,
        )
        (staging / EXPORT_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
