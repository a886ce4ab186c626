"""Writing a run directory: append-only JSONL shards per stage, the manifest, the writer's lock.

Layout::

    RUN_DIR/manifest.json               config, seed, versions, per-stage status and config hash
    RUN_DIR/<stage>/part-00000.jsonl    records, appended a batch at a time (fsync'd)
    RUN_DIR/<stage>/rejected-00000.jsonl inputs the stage refused, with the reason
    RUN_DIR/<stage>/part-chunk-<hash>.jsonl one chunk a Ray worker wrote whole (engine/), and its rejected-chunk-*

Every process that writes a stage opens fresh shards, so a kill can at worst leave a torn last line in a
shard nobody appends to again; readers skip such a line and the ids it held are simply redone on resume.
Reading goes through `runview.RunView`; only the pipeline writes the manifest, through `RunStore`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from pydantic import BaseModel

from constitutional import __version__
from constitutional.errors import InputError
from constitutional.records import RejectedRecord
from constitutional.runview import MANIFEST, Manifest, StageStatus, read_manifest, read_shards, shard_paths

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


def _write_whole(path: Path, records: Sequence[BaseModel]) -> None:
    """A file written to a temporary name (hidden from readers), flushed to disk, then renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as file:
            file.write("".join(record.model_dump_json() + "\n" for record in records))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


class StageFolder:
    """One stage's record folder: what is done, and fresh writers for what comes next. Knows no manifest."""

    def __init__(self, folder: Path):
        self.dir = folder

    def records(self, model: type[R]) -> list[R]:
        return list(read_shards(shard_paths(self.dir, "part"), model))

    def rejected(self) -> list[RejectedRecord]:
        return list(read_shards(shard_paths(self.dir, "rejected"), RejectedRecord))

    def done_ids(self, model: type[BaseModel]) -> set[str]:
        return {r.id for r in self.records(model)} | {r.id for r in self.rejected()}

    def writers(self) -> tuple[ShardWriter, ShardWriter]:
        """Fresh shards for this process: (records, rejected)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        number = len(shard_paths(self.dir, "part")) + len(shard_paths(self.dir, "rejected"))
        stamp = f"{number:05d}-{os.getpid()}"
        return ShardWriter(self.dir / f"part-{stamp}.jsonl"), ShardWriter(self.dir / f"rejected-{stamp}.jsonl")

    def write_chunk(self, records: Sequence[BaseModel], rejected: Sequence[RejectedRecord]) -> None:
        """One chunk's output as shards of its own, named by the ids it holds and each written whole or not at all:
        a chunk done again (its worker died after writing it) replaces its own files, so no id is there twice."""
        ids = sorted(record.id for record in [*records, *rejected])
        key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        # Rejections first: a kill between the two files leaves the records' ids undone, to be redone on resume.
        for prefix, items in (("rejected", rejected), ("part", records)):
            if items:
                _write_whole(self.dir / f"{prefix}-chunk-{key}.jsonl", items)


def refuse_foreign(run_dir: Path) -> None:
    """A run directory is new, empty, or has a manifest: never write into a file or someone else's folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("exists and is not a directory", path=run_dir, hint="choose another --run-dir")
    for parent in run_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{parent} is a file, not a folder", path=run_dir, hint="choose another --run-dir")
            break
    if run_dir.is_dir() and not (run_dir / MANIFEST).exists() and any(run_dir.iterdir()):
        raise InputError(
            f"holds files but no {MANIFEST}: it is not a run directory",
            path=run_dir,
            hint="choose a new or empty --run-dir; runs are never written into other folders",
        )


# Errors of a place that cannot be written: the user's to fix (another folder, or its permissions), not a crash.
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def not_writable(err: OSError, run_dir: Path) -> InputError:
    what = "read-only file system" if err.errno == errno.EROFS else "permission denied"
    return InputError(
        f"cannot write here: {what} ({err.filename or run_dir})",
        path=run_dir,
        hint="choose a --run-dir you can write to, or make this one writable",
    )


class RunStore:
    """The writer of a run directory: the manifest and each stage's folder. Holds a lock while open."""

    def __init__(self, run_dir: str | Path, seed: int = 0):
        self.dir = Path(run_dir)
        refuse_foreign(self.dir)
        self.manifest_path = self.dir / MANIFEST
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.dir / ".lock"))
            self._lock.acquire(timeout=0)
        except Timeout:
            raise InputError(
                "another process is writing to this run directory",
                path=self.dir,
                hint="wait for it to finish, or use a different --run-dir",
            ) from None
        except OSError as err:
            if err.errno in NOT_WRITABLE:
                raise not_writable(err, self.dir) from None
            raise
        try:
            # A kill during a save can leave the next manifest half-written beside the last good one.
            self.manifest_path.with_suffix(".json.tmp").unlink(missing_ok=True)
            if self.manifest_path.exists():
                self.manifest = read_manifest(self.manifest_path)
            else:
                self.manifest = Manifest(created=time.time(), seed=seed, versions=_versions())
                self._save()
        except BaseException as err:
            self._lock.release()
            if isinstance(err, OSError) and err.errno in NOT_WRITABLE:
                raise not_writable(err, self.dir) from None
            raise

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _save(self) -> None:
        """Write the manifest whole or not at all: a temporary file, flushed to disk, renamed over the old one."""
        tmp = self.manifest_path.with_suffix(".json.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as file:
                file.write(self.manifest.model_dump_json(indent=2) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.manifest_path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def status(self, name: str) -> StageStatus | None:
        return self.manifest.stages.get(name)

    def folder(self, relative: str) -> StageFolder:
        return StageFolder(self.dir / relative)

    def start(self, name: str, fingerprint: dict[str, Any]) -> None:
        previous = self.status(name)
        self.manifest.stages[name] = StageStatus(
            status="running",
            fingerprint=fingerprint,
            config_hash=config_hash(fingerprint),
            started=previous.started if previous else time.time(),
        )
        self.manifest.versions = _versions()
        self._save()

    def finish(self, name: str, summary: dict[str, Any], seconds: float) -> None:
        status = self.manifest.stages[name]
        status.status, status.finished, status.seconds = "complete", time.time(), round(seconds, 1)
        status.summary = json.loads(json.dumps(summary, default=str))
        self._save()

    def wrote_anything(self, owned: list[str]) -> bool:
        """Whether any file exists under the paths a stage owns."""
        for relative in owned:
            path = self.dir / relative
            if path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
                return True
        return False

    def abandon(self, name: str, previous: StageStatus | None, owned: list[str]) -> bool:
        """Undo `start` for a stage that stopped before writing anything: its manifest entry goes back to what it
        was and the empty folders it made are removed. Returns False, changing nothing, if it wrote something."""
        if self.wrote_anything(owned):
            return False
        for relative in owned:
            if (self.dir / relative).is_dir():
                shutil.rmtree(self.dir / relative)
        if previous is None:
            self.manifest.stages.pop(name, None)
        else:
            self.manifest.stages[name] = previous
        self._save()
        return True

    def reset(self, name: str, owned: list[str]) -> None:
        """Remove everything the stage owns, then its manifest entry: nothing of an old result survives a redo."""
        for relative in owned:
            path = self.dir / relative
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.manifest.stages.pop(name, None)
        self._save()


# What a run directory holds before any stage has started: removing these loses nothing.
_BOOKKEEPING = {MANIFEST, ".lock", "stages.log"}


def remove_if_unused(run_dir: str | Path) -> bool:
    """Remove a run directory in which no stage has an entry and which holds nothing but bookkeeping files (the
    pipeline calls this for a directory it created itself, when it stops before any stage did work)."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file() or read_manifest(run_dir / MANIFEST).stages:
        return False
    files = [p for p in run_dir.rglob("*") if not p.is_dir()]
    if any(p.relative_to(run_dir).as_posix() not in _BOOKKEEPING for p in files):
        return False
    shutil.rmtree(run_dir)
    return True
