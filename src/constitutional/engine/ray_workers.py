"""A stage's chunks on a Ray cluster: workers that each hold one model replica, fed one chunk at a time.

Each worker is a Ray actor that loads the model once and writes every chunk it finishes as shards of its own
(`StageFolder.write_chunk`), named by the chunk's ids and renamed into place whole. The driver hands out chunks
through Ray's `ActorPool`, one in flight per worker, so a worker that dies loses at most the chunk it held. Ray
restarts a dead worker (reloading its model) and runs the chunk it held again (`max_restarts`,
`max_task_retries`); a chunk written before its worker died is replaced by its second writing, not duplicated.
When the driver dies its workers die with it, and a rerun resumes from the chunks on disk like any stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util import ActorPool
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from constitutional.engine.config import EngineConfig
from constitutional.errors import InputError
from constitutional.models.base import LanguageModel
from constitutional.models.spec import ModelSpec
from constitutional.store import StageFolder


class Replica:
    """One worker: a model loaded once, doing chunks and writing each one whole."""

    def __init__(self, spec: ModelSpec, load: Callable[[ModelSpec], LanguageModel]):
        self.model = load(spec)

    def run(self, work, chunk, folder: str) -> int:
        """Do one chunk, write it, and say how far it moved the stage's progress."""
        units = 0

        def advance(count: int) -> None:
            nonlocal units
            units += count

        output = work(self.model, chunk, advance)
        StageFolder(Path(folder)).write_chunk(output.records, output.rejected)
        return units


def _connect(config: EngineConfig) -> bool:
    """Join the recipe's cluster (or start Ray here); True when this call started the connection."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": config.address, "logging_level": "WARNING"}
    if config.address is None:
        options["include_dashboard"] = False
    try:
        ray.init(**options)
    except ConnectionError as err:
        raise InputError(
            f"cannot join the Ray cluster at {config.address}: {err}",
            field="engine.address",
            hint="start it first (`ray start --head` on the head node), or give the head's host:port",
        ) from None
    return True


def _room(resources: dict[str, float], config: EngineConfig) -> int:
    """How many replicas fit on a node with these resources."""
    fits = [config.replicas_per_node, math.floor(resources.get("CPU", 0) / config.cpus_per_worker)]
    if config.gpus_per_worker:
        fits.append(math.floor(resources.get("GPU", 0) / config.gpus_per_worker))
    return max(min(fits), 0)


def placements(nodes: Sequence[dict[str, Any]], config: EngineConfig) -> list[str]:
    """The node id of each worker: spread over the nodes first (worker i on the i-th node with room left), at most
    `replicas_per_node` and what its CPUs and GPUs allow on each."""
    alive = sorted((n for n in nodes if n.get("Alive")), key=lambda n: n["NodeManagerAddress"])
    slots = {n["NodeID"]: _room(n.get("Resources", {}), config) for n in alive}
    found: list[str] = []
    for round_number in range(max(slots.values(), default=0)):
        found += [node for node, room in slots.items() if room > round_number]
    wanted = config.workers or len(found)
    if not found or wanted > len(found):
        raise InputError(
            f"the Ray cluster has room for {len(found)} model replicas ({len(alive)} nodes, at most "
            f"{config.replicas_per_node} per node, {config.cpus_per_worker:g} CPUs and {config.gpus_per_worker:g} "
            f"GPUs each), and {wanted or 1} are wanted",
            field="engine.workers" if config.workers else "engine.cpus_per_worker",
            hint="ask for fewer workers or fewer CPUs/GPUs per worker, raise replicas_per_node, or add nodes",
        )
    return found[:wanted]


def _on_worker(spec: ModelSpec) -> ModelSpec:
    """A model folder on disk by its absolute path: a worker does not start in this process's directory."""
    path = Path(spec.name).expanduser()
    return spec.model_copy(update={"name": str(path.absolute())}) if path.exists() else spec


# The engine whose workers are on the cluster now. One model's replicas at a time: a stage that uses two models
# (the classifier data's generator, then its judge) would otherwise wait for room its first model's workers hold.
_holding: RayEngine | None = None


class RayEngine:
    """Model replicas on a Ray cluster, started on first use and kept for every run until `close`."""

    def __init__(self, config: EngineConfig, spec: ModelSpec, load: Callable[[ModelSpec], LanguageModel]):
        self.config, self.spec, self.load = config, _on_worker(spec), load
        self.workers: list = []
        self._started_ray = False

    def _start(self) -> None:
        global _holding
        self._started_ray = self._started_ray or _connect(self.config)
        if _holding is not None and _holding is not self:
            _holding.release()
        _holding = self
        remote = ray.remote(Replica)
        for node in placements(ray.nodes(), self.config):
            options = remote.options(
                num_cpus=self.config.cpus_per_worker,
                num_gpus=self.config.gpus_per_worker,
                max_restarts=self.config.restarts,
                max_task_retries=self.config.restarts,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
            )
            self.workers.append(options.remote(self.spec, self.load))

    def run(self, chunks, work, folder, writers, advance) -> None:
        if not chunks:
            return
        if not self.workers:
            self._start()
        where = str(folder.dir.absolute())
        shared = ray.put(work)  # shipped to each worker once, not with every chunk
        pool = ActorPool(self.workers)
        try:
            for units in pool.map_unordered(lambda worker, chunk: worker.run.remote(shared, chunk, where), chunks):
                advance(units)
        except RayActorError as err:
            raise RuntimeError(
                f"a Ray worker of {self.spec.name} died {self.config.restarts + 1} times; the chunks it finished are "
                "on disk, and a rerun resumes from them (raise engine.restarts to let Ray restart it more often)"
            ) from err

    def release(self) -> None:
        """Stop the workers (their models leave memory); the next `run` starts them again."""
        global _holding
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        if _holding is self:
            _holding = None

    def close(self) -> None:
        self.release()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
