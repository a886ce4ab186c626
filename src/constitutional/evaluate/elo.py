"""Elo scores from pairwise comparisons: a Bradley-Terry fit by maximum likelihood, with bootstrap intervals.

A comparison is (winner-candidate i, candidate j, y) with y = P(i beat j) in [0, 1]: soft judge outcomes and
ties (y = 0.5) enter the likelihood as they are. Strengths s are natural-log odds; Elo = 400 * log10(e) * s, so a
400-point gap means 10:1 odds. The scale is anchored at mean 0 across the models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

ELO_PER_NAT = 400.0 / math.log(10.0)
# A weak Gaussian prior on strengths: keeps a model that won every comparison finite (its MLE is +infinity)
# while moving a well-determined fit by far less than its confidence interval.
PRIOR_PRECISION = 1e-3


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    p_a: float  # P(a beat b); 0.5 is a tie


@dataclass(frozen=True)
class EloFit:
    models: list[str]
    elo: list[float]
    low: list[float]
    high: list[float]
    comparisons: list[int]  # comparisons each model took part in


def _strengths(a: np.ndarray, b: np.ndarray, y: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry strengths (nats), centred on 0, of weighted comparisons.

    The likelihood only depends on each ordered pair's total weight and total wins, so the comparisons are
    summed per pair first: a fit costs the same for ten comparisons or ten thousand.
    """
    pair = a * n + b
    total = np.bincount(pair, weights, n * n)
    wins = np.bincount(pair, weights * y, n * n)
    seen = np.flatnonzero(total)
    first, second, total, wins = seen // n, seen % n, total[seen], wins[seen]

    def loss(s: np.ndarray) -> tuple[float, np.ndarray]:
        margin = s[first] - s[second]
        nll = -(wins * log_expit(margin) + (total - wins) * log_expit(-margin)).sum()
        residual = total * expit(margin) - wins  # d nll / d margin
        grad = np.bincount(first, residual, n) - np.bincount(second, residual, n) + PRIOR_PRECISION * s
        return float(nll + 0.5 * PRIOR_PRECISION * (s @ s)), grad

    # BFGS rather than L-BFGS-B: the latter calls into threaded BLAS, whose threads spin on a busy CPU and made
    # each of these tiny fits ~15x slower in the bootstrap loop.
    fitted = minimize(loss, np.zeros(n), jac=True, method="BFGS").x
    return fitted - fitted.mean()


def fit_elo(
    comparisons: Sequence[Comparison],
    models: Sequence[str] | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> EloFit:
    """Elo per model (mean 0) with percentile intervals from resampling the comparisons with replacement."""
    names = list(models) if models is not None else sorted({c.a for c in comparisons} | {c.b for c in comparisons})
    if not comparisons:
        raise ValueError("fit_elo needs at least one comparison")
    index = {name: i for i, name in enumerate(names)}
    a = np.array([index[c.a] for c in comparisons])
    b = np.array([index[c.b] for c in comparisons])
    y = np.array([c.p_a for c in comparisons], dtype=float)
    point = _strengths(a, b, y, np.ones(len(y)), len(names)) * ELO_PER_NAT
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, len(names)))
    for r in range(resamples):
        # Resampling with replacement = weighting each comparison by how often it was drawn.
        drawn = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(float)
        draws[r] = _strengths(a, b, y, drawn, len(names)) * ELO_PER_NAT
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    counts = np.bincount(a, minlength=len(names)) + np.bincount(b, minlength=len(names))
    return EloFit(names, point.tolist(), low.tolist(), high.tolist(), counts.tolist())
