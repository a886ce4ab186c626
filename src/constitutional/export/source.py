"""What a run hands to other trainers: its prompts, SFT rows and labelled preferences, read through the run view.

Reading never writes to the run. Every row keeps the id of the record it came from, and rows are put in a split
by a hash of that id, so a prompt, its SFT row and its preference pair always land in the same split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from constitutional.errors import InputError
from constitutional.models.base import Message
from constitutional.records import ComparisonRecord, PairRecord, SLRecord
from constitutional.runs import sl_rows
from constitutional.runview import RunView
from constitutional.stages.definitions import PM_TRAIN, RL_LABEL, RL_SAMPLE, SL_GENERATE

Split = Literal["train", "test"]
READ_STAGES = (SL_GENERATE, RL_SAMPLE, RL_LABEL)


@dataclass(frozen=True)
class PromptRow:
    """A prompt of the run, with the run's best answer to it when it has one (what a judge compares against)."""

    id: str
    kind: str
    messages: list[Message]
    reference: str | None  # the SL-CAI final revision (or helpfulness answer), else its pair's preferred answer
    stage: str  # the stage whose records hold the prompt


@dataclass(frozen=True)
class RunRows:
    """Everything exported from one run, in format-neutral rows."""

    prompts: list[PromptRow]
    sft: list[dict[str, Any]]  # {"messages", "id", "kind"}: the rows `cai sl export --format sft` writes
    preferences: list[dict[str, Any]]  # TRL's conversational preference row + the soft label and provenance

    def split(self, test_share: float, seed: int) -> dict[Split, RunRows]:
        """The rows of each split; a split with no row at all is left out."""
        parts: dict[Split, RunRows] = {}
        for name in ("train", "test"):
            part = RunRows(
                prompts=[p for p in self.prompts if split_of(p.id, test_share, seed) == name],
                sft=[r for r in self.sft if split_of(r["id"], test_share, seed) == name],
                preferences=[r for r in self.preferences if split_of(r["id"], test_share, seed) == name],
            )
            if part.prompts or part.sft or part.preferences:
                parts[name] = part
        return parts


def split_of(record_id: str, test_share: float, seed: int) -> Split:
    """A stable split from the id alone: the same id is in the same split whatever else the run holds."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"


def preference_rows(records: list[ComparisonRecord]) -> list[dict[str, Any]]:
    """`{"prompt", "chosen", "rejected", "p_chosen", "kind", "id"}` plus who labelled it under which principles."""
    return [
        r.preference_row() | {"principles": r.principles, "feedback_model": r.model, "constitution": r.constitution}
        for r in records
    ]


def _prompt_rows(sl: list[SLRecord], pairs: list[PairRecord], labels: list[ComparisonRecord]) -> list[PromptRow]:
    """The SL-CAI prompts with their final answers, then the sampled prompts not among them."""
    preferred = {r.id: r.preference_row()["chosen"][0]["content"] for r in labels}
    rows = [PromptRow(r.id, r.kind, r.prompt, r.final, SL_GENERATE.name) for r in sl]
    seen = {(r.id, str(r.prompt)) for r in sl}
    for pair in pairs:
        if (pair.id, str(pair.prompt)) not in seen:
            seen.add((pair.id, str(pair.prompt)))
            rows.append(PromptRow(pair.id, pair.kind, pair.prompt, preferred.get(pair.id), RL_SAMPLE.name))
    return rows


def read_run(run_dir: str | Path) -> RunRows:
    """The run's rows; a run with neither SL-CAI records nor sampled pairs has nothing to export."""
    view = RunView(run_dir)
    sl = view.records(SL_GENERATE.name, SLRecord)
    pairs = view.records(RL_SAMPLE.name, PairRecord)
    labels = view.records(RL_LABEL.name, ComparisonRecord)
    if not sl and not pairs:
        raise InputError(
            "the run has no prompts to export: no SL-CAI records and no sampled pairs",
            path=view.dir,
            hint=f"run `{SL_GENERATE.cli}` (and `{RL_SAMPLE.cli}`, `{RL_LABEL.cli}` for preferences) first",
        )
    return RunRows(
        prompts=_prompt_rows(sl, pairs, labels),
        sft=sl_rows(view.dir, "sft") if sl else [],
        preferences=preference_rows(labels),
    )


def stage_provenance(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Status and config hash of each stage an export reads (and of the preference model), as the manifest says."""
    view = RunView(run_dir)
    found = {}
    for stage in (*READ_STAGES, PM_TRAIN):
        status = view.status(stage.name)
        if status is not None:
            found[stage.name] = {"status": status.status, "config_hash": status.config_hash}
    return found


def preference_model_dir(run_dir: str | Path) -> Path | None:
    """The run's trained preference model, when its stage is complete."""
    view = RunView(run_dir)
    return PM_TRAIN.output(view.dir, "model") if view.is_complete(PM_TRAIN.name) else None
