"""AI feedback: the feedback model's multiple-choice preference between two answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FeedbackConfig(BaseModel):
    """AI feedback: the feedback model's multiple-choice preference between two answers."""

    model_config = ConfigDict(extra="forbid")
