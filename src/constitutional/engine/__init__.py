"""Running a stage's chunks: each chunk of prompt ids is one unit of work on one model, and of durability.

A stage splits what it still has to do into chunks and hands them, with a `Work` (what a model makes of one chunk),
to a `ChunkEngine` bound to one model. `LocalEngine` is the one-process path: the loaded model does the chunks in
order and this process's shards receive them, exactly as the stages always did. `RayEngine` (engine/ray_workers.py)
gives the chunks to workers on a Ray cluster, each holding a replica of the model and writing each chunk it finishes
as shards of its own. Either way, what is on disk is what resume reads: a rerun does only the ids no chunk wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydantic import BaseModel

from constitutional.engine.config import EngineConfig
from constitutional.models.base import LanguageModel
from constitutional.models.spec import ModelSpec
from constitutional.records import RejectedRecord
from constitutional.store import ShardWriter, StageFolder

C = TypeVar("C")
Advance = Callable[[int], None]


@dataclass
class Output:
    """What one chunk made: its records, and the inputs it refused with the reason."""

    records: list[BaseModel]
    rejected: list[RejectedRecord] = field(default_factory=list)


class Work(Protocol[C]):
    """A model's work on one chunk. `advance` moves the stage's progress bar by units of the stage's own choosing.
    A Ray worker receives it pickled: a module-level function or a `functools.partial` of one."""

    def __call__(self, model: LanguageModel, chunk: C, advance: Advance) -> Output: ...


class ChunkEngine(Protocol):
    def run(
        self,
        chunks: Sequence[C],
        work: Work[C],
        folder: StageFolder,
        writers: tuple[ShardWriter, ShardWriter],
        advance: Advance,
    ) -> None:
        """Do every chunk; each one's output is on disk in `folder` before the next is counted done. `writers`
        (records, rejected) are this process's shards in `folder`."""
        ...


class LocalEngine:
    """This process: the loaded model does the chunks in order, into this process's shards."""

    def __init__(self, model: LanguageModel):
        self.model = model

    def run(self, chunks, work, folder, writers, advance) -> None:
        records_out, rejected_out = writers
        for chunk in chunks:
            output = work(self.model, chunk, advance)
            records_out.write(output.records)
            rejected_out.write(output.rejected)


@contextlib.contextmanager
def open_engine(
    config: EngineConfig, spec: ModelSpec, model: LanguageModel, load: Callable[[ModelSpec], LanguageModel]
) -> Iterator[ChunkEngine]:
    """The engine the recipe names for one model: `model` itself (local), or replicas of `spec` each built by
    `load` on a Ray worker, released when the block ends."""
    if config.kind == "local":
        yield LocalEngine(model)
        return
    from constitutional.engine.ray_workers import RayEngine

    engine = RayEngine(config, spec, load)
    try:
        yield engine
    finally:
        engine.close()


__all__ = ["Advance", "ChunkEngine", "EngineConfig", "LocalEngine", "Output", "Work", "open_engine"]
