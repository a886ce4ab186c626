"""Reading a run: the typed manifest, each stage's status and records. Read-only: no lock, creates nothing.

The report, the exports, `cai pm score` and the pipeline's decisions read runs through `RunView`; only
`store.RunStore` writes one. A missing directory, a file in its place, or a folder that is not a run (no
manifest) is an `InputError` that says so, never an empty result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from constitutional.errors import InputError, from_validation
from constitutional.records import SCHEMA_VERSION, RejectedRecord

R = TypeVar("R", bound=BaseModel)
MANIFEST = "manifest.json"


class StageStatus(BaseModel):
    """One stage's entry in the manifest."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["running", "complete"]
    config_hash: str = Field(description="Hash of the fingerprint: a different hash means different outputs.")
    fingerprint: dict[str, Any] = Field(description="Config, upstream hashes, templates, version, input hashes.")
    started: float
    finished: float | None = None
    seconds: float | None = Field(default=None, description="Wall time of the run that completed the stage.")
    summary: dict[str, Any] = Field(default_factory=dict, description="What the stage reported when it finished.")

    @property
    def complete(self) -> bool:
        return self.status == "complete"


class Manifest(BaseModel):
    """RUN_DIR/manifest.json: the run's seed, package versions, and every stage's status."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    created: float
    seed: int
    versions: dict[str, str]
    stages: dict[str, StageStatus] = Field(default_factory=dict)


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as err:
        hint = "the manifest is damaged or was written by another tool; use a new --run-dir"
        raise from_validation(err, path=path, hint=hint) from None


def read_shards(paths: Iterable[Path], model: type[R]) -> Iterator[R]:
    """Records from shards in order, first occurrence of each id only; a torn final line is skipped."""
    seen: set[str] = set()
    for path in paths:
        lines = path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = model.model_validate_json(line)
            except ValidationError as err:
                if number == len(lines):
                    break  # torn by a kill mid-write: the id will be redone
                hint = f"not a valid {model.__name__}: delete the corrupt line (its id will be redone) and rerun"
                raise from_validation(err, path=path, line=number, hint=hint) from None
            if record.id not in seen:
                seen.add(record.id)
                yield record


def shard_paths(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}-*.jsonl"))


class RunView:
    """A run directory as it is on disk now. Every read goes to the disk, so a view never goes stale."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not self.dir.exists():
            raise InputError("no such run directory", path=self.dir, hint="pass the --run-dir a stage wrote to")
        if not self.dir.is_dir():
            raise InputError("not a directory", path=self.dir, hint="pass the run directory, not a file in it")
        if not (self.dir / MANIFEST).is_file():
            raise InputError(
                f"not a run directory: it has no {MANIFEST}",
                path=self.dir,
                hint="pass the --run-dir a pipeline stage wrote to (e.g. runs/demo)",
            )

    @property
    def manifest(self) -> Manifest:
        return read_manifest(self.dir / MANIFEST)

    def status(self, stage: str) -> StageStatus | None:
        return self.manifest.stages.get(stage)

    def is_complete(self, stage: str) -> bool:
        status = self.status(stage)
        return status is not None and status.complete

    def records(self, folder: str, model: type[R]) -> list[R]:
        """The records a stage wrote to its folder (empty when it has written none)."""
        return list(read_shards(shard_paths(self.dir / folder, "part"), model))

    def rejected(self, folder: str) -> list[RejectedRecord]:
        return list(read_shards(shard_paths(self.dir / folder, "rejected"), RejectedRecord))

    def read_json(self, relative: str, model: type[R]) -> R | None:
        """A typed JSON file a stage wrote, or None when it is not there."""
        path = self.dir / relative
        if not path.is_file():
            return None
        try:
            return model.model_validate_json(path.read_bytes())
        except ValidationError as err:
            hint = f"not a valid {model.__name__}: the file is damaged or from another version; rerun its stage"
            raise from_validation(err, path=path, hint=hint) from None

    def path(self, relative: str) -> Path:
        return self.dir / relative
