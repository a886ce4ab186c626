"""Calibration: do predicted probabilities match observed frequencies? One binning for every caller.

The multiple-choice evaluation passes the top choice's probability and whether it was right (0/1); the
preference model passes sigmoid(reward margin) and the soft label it should match. Both get the same
equal-width bins (a probability of exactly 1.0 falls in the last bin) and the same count-weighted ECE.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from constitutional.records import Calibration, CalibrationBin


def calibrate(predicted: Sequence[float], observed: Sequence[float], bins: int = 10) -> Calibration:
    """Reliability bins (non-empty ones only) and the expected calibration error over them."""
    p = np.asarray(predicted, dtype=float)
    o = np.asarray(observed, dtype=float)
    if p.shape != o.shape:
        raise ValueError(f"{len(p)} predictions but {len(o)} observations")
    if not len(p):
        return Calibration(ece=0.0, bins=[])
    which = np.minimum((p * bins).astype(int), bins - 1)
    table = [
        CalibrationBin(
            low=b / bins,
            high=(b + 1) / bins,
            count=int((which == b).sum()),
            predicted=float(p[which == b].mean()),
            observed=float(o[which == b].mean()),
        )
        for b in range(bins)
        if (which == b).any()
    ]
    ece = sum(row.count * abs(row.observed - row.predicted) for row in table) / len(p)
    return Calibration(ece=float(ece), bins=table)
