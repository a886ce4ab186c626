"""RL against the preference model (RLOO, GRPO) or DPO on the labelled pairs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RLConfig(BaseModel):
    """RL against the preference model (RLOO, GRPO) or DPO on the labelled pairs."""

    model_config = ConfigDict(extra="forbid")
