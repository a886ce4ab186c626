"""Held-out evaluation: Elo, harmfulness, evasiveness, the revision curve."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EvalConfig(BaseModel):
    """Held-out evaluation: Elo, harmfulness, evasiveness, the revision curve."""

    model_config = ConfigDict(extra="forbid")
