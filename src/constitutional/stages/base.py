"""What a stage definition is, and the fingerprint that decides whether its output is still good.

A stage's fingerprint is everything its
output depends on: its recipe settings, the models it uses, the text of every prompt template it renders, the
package version, a content hash of each input file and of the constitution, and the config hashes of the upstream
stages it reads. The pipeline compares fingerprints to decide what to skip, resume or redo; the stage modules
receive their inputs and output paths from here and know nothing of the run directory's layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from constitutional import __version__, prompts
from constitutional.errors import InputError
from constitutional.recipe import Recipe
from constitutional.runview import RunView
from constitutional.store import RunStore, StageFolder

# What identifies a model in a fingerprint (batch size and dtype change speed, not the records).
MODEL_KEYS = {"name", "backend", "base_url"}


def _nothing(recipe: Recipe) -> tuple[StageDef, ...]:
    return ()


@dataclass(frozen=True)
class StageDef:
    name: str
    command: str  # `cai <command>` runs this stage alone
    summary: str  # what it does, one line (the command's help)
    example: str
    section: str | None  # the recipe section its command's flags set
    config: Callable[[Recipe], dict[str, Any]]  # the settings its output depends on
    run: Callable[[Recipe, Context], dict[str, Any]]  # does the work; returns the summary for the manifest
    needs: Callable[[Recipe], tuple[StageDef, ...]] = _nothing  # upstream stages that must be complete
    uses: Callable[[Recipe], tuple[StageDef, ...]] = _nothing  # upstream stages read when they are complete
    outputs: dict[str, str] = field(default_factory=dict)  # key -> path in the run dir, besides its own folder
    templates: tuple[str, ...] = ()  # names of the prompts.py templates it renders
    inputs: Callable[[Recipe], list[str | None]] = lambda recipe: []  # files it reads (paths or builtin:NAME)
    resume: Literal["records", "checkpoint", "restart"] = "records"

    @property
    def cli(self) -> str:
        return f"cai {self.command}"

    def output(self, run_dir: str | Path, key: str) -> Path:
        return Path(run_dir) / self.outputs[key]

    def owned(self) -> list[str]:
        """Everything reset removes: the stage's folder and its other outputs."""
        return [self.name, *self.outputs.values()]


@dataclass
class Context:
    """What a running stage may touch: its own folder, and the outputs of complete upstream stages."""

    store: RunStore
    stage: StageDef

    @property
    def folder(self) -> StageFolder:
        return self.store.folder(self.stage.name)

    def complete(self, upstream: StageDef) -> bool:
        status = self.store.status(upstream.name)
        return status is not None and status.complete

    def records(self, upstream: StageDef, model: type) -> list:
        return self.store.folder(upstream.name).records(model)

    def output(self, stage: StageDef, key: str) -> Path:
        return stage.output(self.store.dir, key)


def _file_digest(source: str) -> str:
    """A content hash of an input file, or of every file in a folder (a saved dataset), so edits are noticed."""
    from constitutional.sources import source_path

    path = source_path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    try:
        for file in files:
            digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            digest.update(file.read_bytes())
    except OSError as err:
        raise InputError(f"cannot read input file: {err.strerror}", path=err.filename or path) from None
    return digest.hexdigest()[:16]


def constitution_digest(constitution) -> str:
    """name@version plus a hash of every principle and demonstration: an edited file counts, not just a new tag."""
    return f"{constitution.tag}:{hashlib.sha256(constitution.model_dump_json().encode()).hexdigest()[:16]}"


def local_fingerprint(recipe: Recipe, stage: StageDef) -> dict[str, Any]:
    """The part of a fingerprint that needs no run directory; computing it validates the stage's inputs."""
    return {
        "config": stage.config(recipe),
        "templates": {name: getattr(prompts, name) for name in stage.templates},
        "inputs": {source: _file_digest(source) for source in stage.inputs(recipe) if source is not None},
        "version": __version__,
    }


def upstream_hashes(recipe: Recipe, stage: StageDef, view: RunView | RunStore) -> dict[str, str]:
    """Config hashes of the upstream stages read: required ones must be complete, optional ones count if so."""
    found = {}
    for upstream in stage.needs(recipe):
        status = view.status(upstream.name)
        if status is None or not status.complete:
            raise InputError(
                f"stage '{stage.name}' reads the output of '{upstream.name}', which is not complete in {view.dir}",
                hint=f"run `{upstream.cli}` with the same --config first, or `cai run` for every stage",
            )
        found[upstream.name] = status.config_hash
    for upstream in stage.uses(recipe):
        status = view.status(upstream.name)
        if status is not None and status.complete:
            found[upstream.name] = status.config_hash
    return found


def model_key(spec) -> dict[str, Any]:
    return spec.model_dump(include=MODEL_KEYS)


def chunk_engine(recipe: Recipe, spec, model):
    """What does a stage's chunks for one model, as the recipe's `engine:` says: `model` here, or Ray workers each
    loading `spec` (a context manager: the workers are released when the block ends)."""
    from constitutional.engine import open_engine
    from constitutional.models import load_model

    return open_engine(recipe.engine, spec, model, load_model)
