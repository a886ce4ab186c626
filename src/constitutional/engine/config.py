"""Where a stage's model calls run: in this process (the default), or on model replicas spread over a Ray cluster.

The engine changes how fast records are made, never which: it is not part of any stage's fingerprint, so a run
begun on one engine can be resumed on the other.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EngineConfig(BaseModel):
    """The `engine:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = Field(
        default="local",
        description="local: this process loads each model once and does every chunk in turn. ray: workers on a "
        "Ray cluster (pip install 'constitutional[ray]'), each holding one model replica, share the chunks of "
        "sl_generate, rl_sample, rl_label, the evaluation's answers and clf_generate.",
    )
    address: str | None = Field(
        default=None,
        description="ray: the cluster to join ('auto', or the head's host:port); null starts Ray on this machine "
        "for the run. Every node must see the run directory at the same path (a shared file system).",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="ray: model replicas in all; null: replicas_per_node on every node that has room for one.",
    )
    replicas_per_node: int = Field(
        default=1, ge=1, description="ray: model replicas at most on one node (e.g. its GPUs per replica)."
    )
    cpus_per_worker: float = Field(
        default=1.0, gt=0, description="ray: CPUs each replica reserves (torch uses as many threads)."
    )
    gpus_per_worker: float = Field(default=0.0, ge=0, description="ray: GPUs each replica reserves.")
    restarts: int = Field(
        default=3,
        ge=0,
        description="ray: times a worker that died is restarted (its model reloaded, its chunk redone) before "
        "the stage stops; a rerun resumes from the chunks on disk.",
    )

    @field_validator("kind")
    @classmethod
    def _ray_installed(cls, kind: str) -> str:
        if kind == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("Ray is not installed here: pip install 'constitutional[ray]' (on every node)")
        return kind
