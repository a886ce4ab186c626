"""Decision thresholds calibrated on held-out benign examples to a target false-positive rate.

A classifier flags a text when its score is strictly above the threshold. Calibration picks the lowest threshold
at which at most `target_fpr` of the benign calibration scores are above it, so on those scores the false-positive
rate never exceeds the target and comes as close to it as ties allow. With fewer than 1 / target_fpr benign scores
no false positive at all is allowed, and the threshold is the highest benign score: `resolvable` says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from constitutional.errors import InputError

DEFAULT_TARGET_FPR = 0.01


class Threshold(BaseModel):
    """A calibrated threshold and what it was calibrated on; stored with the model."""

    model_config = ConfigDict(extra="forbid")

    value: float = Field(description="Flag when the score is strictly above this.")
    target_fpr: float = Field(description="False-positive rate asked for on the benign calibration split.")
    achieved_fpr: float = Field(description="False-positive rate at `value` on those calibration scores.")
    benign_count: int = Field(description="Benign calibration examples it was set on.")
    resolvable: bool = Field(
        description="Whether there were enough benign examples (at least 1 / target_fpr) to resolve the target."
    )


def calibrate_threshold(benign_scores: Sequence[float], target_fpr: float = DEFAULT_TARGET_FPR) -> Threshold:
    """The threshold that lets through at most `target_fpr` of `benign_scores` as false positives."""
    if not 0.0 < target_fpr < 1.0:
        raise InputError(f"target_fpr must be between 0 and 1, got {target_fpr}", field="target_fpr")
    scores = np.sort(np.asarray(benign_scores, dtype=float))[::-1]
    if not len(scores):
        raise InputError(
            "no benign examples to calibrate the threshold on",
            field="split",
            hint="put some label-0 examples in the 'calibration' split",
        )
    allowed = math.floor(target_fpr * len(scores))  # false positives the target permits; below len(scores)
    value = float(scores[allowed])
    return Threshold(
        value=value,
        target_fpr=target_fpr,
        achieved_fpr=float(np.mean(scores > value)),
        benign_count=len(scores),
        resolvable=len(scores) * target_fpr >= 1.0,
    )
