"""Means with seeded bootstrap confidence intervals, the one interval every evaluation table uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from constitutional.records import Interval


def mean_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Interval:
    """The mean and its percentile-bootstrap interval; a single value has a zero-width interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(data.mean())
    if data.size == 1:
        return Interval(value=mean, low=mean, high=mean)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(value=mean, low=float(low), high=float(high))
