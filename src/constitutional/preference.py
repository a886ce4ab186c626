"""Training the preference model on soft labels."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PMConfig(BaseModel):
    """Training the preference model on soft labels."""

    model_config = ConfigDict(extra="forbid")
