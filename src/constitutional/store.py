"""A run directory: append-only JSONL shards per stage, a manifest, resume, export to Hugging Face datasets.

Layout::

    RUN_DIR/manifest.json               config, seed, versions, per-stage status and config hash
    RUN_DIR/<stage>/part-00000.jsonl    records, appended a batch at a time (fsync'd)
    RUN_DIR/<stage>/rejected-00000.jsonl inputs the stage refused, with the reason

Every process that writes a stage opens fresh shards, so a kill can at worst leave a torn last line in a
shard nobody appends to again; readers skip such a line and the ids it held are simply redone on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from constitutional import __version__
from constitutional.errors import InputError
from constitutional.records import SCHEMA_VERSION, RejectedRecord

R = TypeVar("R", bound=BaseModel)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"constitutional": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "datasets"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class ShardWriter:
    """Appends records to one new shard; each `write` is durable once it returns."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def write(self, records: Iterable[BaseModel]) -> None:
        lines = "".join(record.model_dump_json() + "\n" for record in records)
        if not lines:
            return
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(lines)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


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
                raise InputError(
                    f"not a valid {model.__name__}: {err.errors()[0]['msg']}",
                    path=path,
                    line=number,
                    field=".".join(str(p) for p in err.errors()[0]["loc"]) or None,
                    hint="this shard is corrupt; delete the line (its id will be redone) and rerun",
                ) from None
            if record.id not in seen:
                seen.add(record.id)
                yield record


class Stage:
    """One stage's folder in a run: what is done, and writers for what comes next."""

    def __init__(self, run: RunStore, name: str):
        self.run, self.name = run, name
        self.dir = run.dir / name

    def _shards(self, prefix: str) -> list[Path]:
        return sorted(self.dir.glob(f"{prefix}-*.jsonl"))

    def records(self, model: type[R]) -> list[R]:
        return list(read_shards(self._shards("part"), model))

    def rejected(self) -> list[RejectedRecord]:
        return list(read_shards(self._shards("rejected"), RejectedRecord))

    def done_ids(self, model: type[BaseModel]) -> set[str]:
        return {r.id for r in self.records(model)} | {r.id for r in self.rejected()}

    def writers(self) -> tuple[ShardWriter, ShardWriter]:
        """Fresh shards for this process: (records, rejected)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        number = len(self._shards("part")) + len(self._shards("rejected"))
        stamp = f"{number:05d}-{os.getpid()}"
        return ShardWriter(self.dir / f"part-{stamp}.jsonl"), ShardWriter(self.dir / f"rejected-{stamp}.jsonl")

    @property
    def status(self) -> dict[str, Any]:
        return self.run.manifest()["stages"].get(self.name, {})

    def is_complete(self, config: dict[str, Any]) -> bool:
        status = self.status
        return status.get("status") == "complete" and status.get("config_hash") == config_hash(config)

    def start(self, config: dict[str, Any]) -> None:
        previous = self.status
        if previous.get("config_hash") not in (None, config_hash(config)):
            raise InputError(
                f"stage '{self.name}' in {self.run.dir} was run with a different config",
                hint="use a new run directory, or pass --force to redo the stage from scratch",
            )
        self.run.update_stage(
            self.name,
            status="running",
            config=config,
            config_hash=config_hash(config),
            started=previous.get("started", time.time()),
        )

    def reset(self) -> None:
        """Forget the stage's outputs (for --force)."""
        for path in [*self._shards("part"), *self._shards("rejected")]:
            path.unlink()
        self.run.manifest_data["stages"].pop(self.name, None)
        self.run.save_manifest()

    def finish(self, **summary: Any) -> None:
        self.run.update_stage(self.name, status="complete", finished=time.time(), summary=summary)


class RunStore:
    """A run directory shared by all stages of a recipe. Holds a lock while a process writes to it."""

    def __init__(self, run_dir: str | Path, seed: int = 0):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.dir / ".lock"))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise InputError(
                "another process is writing to this run directory",
                path=self.dir,
                hint="wait for it to finish, or use a different --run-dir",
            ) from None
        self.manifest_path = self.dir / "manifest.json"
        if self.manifest_path.exists():
            self.manifest_data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        else:
            self.manifest_data = {
                "schema_version": SCHEMA_VERSION,
                "created": time.time(),
                "seed": seed,
                "versions": _versions(),
                "stages": {},
            }
            self.save_manifest()

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def manifest(self) -> dict[str, Any]:
        return self.manifest_data

    def save_manifest(self) -> None:
        _write_json_atomic(self.manifest_path, self.manifest_data)

    def update_stage(self, name: str, **fields: Any) -> None:
        self.manifest_data["stages"].setdefault(name, {}).update(fields)
        self.manifest_data["versions"] = _versions()
        self.save_manifest()

    def stage(self, name: str) -> Stage:
        return Stage(self, name)


def to_dataset(rows: list[dict[str, Any]]):
    """Rows as a Hugging Face `datasets.Dataset` (save_to_disk / to_parquet from there)."""
    from datasets import Dataset

    return Dataset.from_list(rows)
