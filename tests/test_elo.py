"""Bradley-Terry Elo: recovery of known strengths, interval coverage, soft outcomes and ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from constitutional.evaluate.elo import Comparison, fit_elo

TRUE_ELO = {"weak": -150.0, "middle": 0.0, "strong": 150.0}


def _simulate(n: int, seed: int) -> list[Comparison]:
    rng = np.random.default_rng(seed)
    names = list(TRUE_ELO)
    comparisons = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        p_a = 1.0 / (1.0 + 10 ** ((TRUE_ELO[b] - TRUE_ELO[a]) / 400))
        comparisons.append(Comparison(a, b, float(rng.random() < p_a)))
    return comparisons


def test_fit_recovers_the_order_and_the_intervals_cover_the_truth():
    fit = fit_elo(_simulate(600, seed=3), list(TRUE_ELO), resamples=200, seed=0)
    assert fit.elo[0] < fit.elo[1] < fit.elo[2]
    assert abs(sum(fit.elo)) < 1e-6  # anchored at mean 0, like the truth
    for name, value, low, high in zip(fit.models, fit.elo, fit.low, fit.high, strict=True):
        assert low <= TRUE_ELO[name] <= high, (name, low, high)
        assert low <= value <= high
    assert fit.comparisons == [sum(name in (c.a, c.b) for c in _simulate(600, 3)) for name in TRUE_ELO]


def test_intervals_cover_the_truth_in_most_repeated_experiments():
    covered = total = 0
    for seed in range(8):
        fit = fit_elo(_simulate(300, seed=100 + seed), list(TRUE_ELO), resamples=100, seed=seed)
        for name, low, high in zip(fit.models, fit.low, fit.high, strict=True):
            covered += low <= TRUE_ELO[name] <= high
            total += 1
    assert covered / total >= 0.8


def test_soft_outcomes_give_the_elo_gap_of_their_odds():
    # P(a beats b) = 0.75 on every comparison: odds 3:1, i.e. a gap of 400 * log10(3) Elo.
    fit = fit_elo([Comparison("a", "b", 0.75)] * 50, ["a", "b"], resamples=50)
    assert fit.elo[0] - fit.elo[1] == pytest.approx(400 * math.log10(3), rel=0.02)


def test_ties_leave_models_level_and_a_model_that_always_wins_stays_finite():
    tied = fit_elo([Comparison("a", "b", 0.5)] * 20, ["a", "b"], resamples=50)
    assert tied.elo == pytest.approx([0.0, 0.0], abs=1e-3)
    sweep = fit_elo([Comparison("a", "b", 1.0)] * 20, ["a", "b"], resamples=50)
    assert all(math.isfinite(v) for v in sweep.elo + sweep.low + sweep.high)
    assert sweep.elo[0] > 400


def test_bootstrap_is_seeded():
    comparisons = _simulate(100, seed=1)
    first = fit_elo(comparisons, list(TRUE_ELO), resamples=100, seed=5)
    again = fit_elo(comparisons, list(TRUE_ELO), resamples=100, seed=5)
    other = fit_elo(comparisons, list(TRUE_ELO), resamples=100, seed=6)
    assert first == again
    assert first.low != other.low
