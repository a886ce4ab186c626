"""What can be done with a run's records once written: export SL-CAI rows, score a run's pairs with a PM.

These read the run through the run view (never creating anything) and the stage definitions' names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from constitutional.errors import InputError
from constitutional.records import PairRecord, SLRecord
from constitutional.runview import RunView
from constitutional.stages.definitions import RL_SAMPLE, SL_GENERATE


def sl_rows(run_dir: str | Path, fmt: Literal["records", "sft"]) -> list[dict[str, Any]]:
    """The run's SL-CAI records as they are, or as SFT rows (`{"messages": [...]}`, final revisions)."""
    from constitutional.sl_train import sft_examples

    view = RunView(run_dir)
    records = view.records(SL_GENERATE.name, SLRecord)
    if not records:
        raise InputError("the run has no SL-CAI records", path=view.dir, hint=f"run `{SL_GENERATE.cli}` first")
    if fmt == "records":
        return [r.model_dump() for r in records]
    return sft_examples(records, "final", 1.0, view.manifest.seed)


def write_rows(rows: list[dict[str, Any]], output: str | Path, as_: Literal["jsonl", "parquet", "hf"]) -> None:
    """Rows as JSON Lines, Parquet, or a saved Hugging Face dataset (`datasets.load_from_disk`)."""
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    if as_ == "hf":
        dataset.save_to_disk(str(output))
    elif as_ == "parquet":
        dataset.to_parquet(str(output))
    else:
        dataset.to_json(str(output), lines=True)


def score_pairs(run_dir: str | Path, model) -> list[dict[str, Any]]:
    """`{"id", "kind", "score_a", "score_b"}` for each of the run's sampled pairs, by a loaded PreferenceModel."""
    view = RunView(run_dir)
    records = view.records(RL_SAMPLE.name, PairRecord)
    if not records:
        raise InputError("the run has no pairs", path=view.dir, hint=f"run `{RL_SAMPLE.cli}` first")
    both = model.score([r.prompt for r in records] * 2, [r.a for r in records] + [r.b for r in records])
    return [
        {"id": r.id, "kind": r.kind, "score_a": a, "score_b": b}
        for r, a, b in zip(records, both[: len(records)], both[len(records) :], strict=True)
    ]
