"""Sampling two answers per prompt from the policy, for AI feedback."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PairsConfig(BaseModel):
    """Sampling two answers per prompt from the policy, for AI feedback."""

    model_config = ConfigDict(extra="forbid")
