"""Simulated checkpoints of known accuracy, to measure what eval/stats.py promises: how often its
95% intervals cover the true accuracy, how often its paired test calls equal checkpoints
different, and how often it finds a real difference (``scripts/bench_eval.py`` prints these).

Items differ in difficulty: item i is answered right with probability p_i, drawn from a Beta
distribution with mean ``accuracy`` and concentration ``concentration`` (p_i ~ Beta(m c,
(1 - m) c)); two checkpoints answer independently given p_i, so they agree on the easy and the
hard items, as two fine-tunes of one base do (concentration 1: about 3/4 of the items at
mean 0.6; ``concentration=None``: every p_i is the mean, independent answers, the worst case).
A better checkpoint's p_i are raised by ``delta (1 - p_i) / (1 - m)``, which stays in [0, 1]
and raises the mean by exactly ``delta``.
"""

from __future__ import annotations

import numpy as np

from eval.stats import ALPHA, bootstrap_ci, mcnemar_midp


def difficulties(rng, n: int, accuracy: float, concentration: float | None) -> np.ndarray:
    if concentration is None:
        return np.full(n, accuracy)
    return rng.beta(accuracy * concentration, (1 - accuracy) * concentration, size=n)


def paired_answers(rng, n: int, accuracy: float, delta: float,
                   concentration: float | None) -> tuple[np.ndarray, np.ndarray]:
    """0/1 scores of two checkpoints on the same n items; the second's true accuracy is
    ``accuracy + delta``."""
    p = difficulties(rng, n, accuracy, concentration)
    q = p + delta * (1 - p) / (1 - accuracy)
    return (rng.random(n) < p).astype(float), (rng.random(n) < q).astype(float)


def ci_coverage(trials: int = 1000, n: int = 900, accuracies=(0.25, 0.5, 0.75, 0.9),
                seed: int = 1) -> float:
    """The share of trials whose 95% bootstrap interval covers the true accuracy (the items of
    each trial are a fresh draw from the population of items)."""
    rng = np.random.default_rng(seed)
    covered = 0
    for t in range(trials):
        accuracy = accuracies[t % len(accuracies)]
        scores = (rng.random(n) < accuracy).astype(float)
        low, high = bootstrap_ci(scores)
        covered += low <= accuracy <= high
    return covered / trials


def rejection_rate(trials: int, n: int = 900, accuracy: float = 0.6, delta: float = 0.0,
                   concentration: float | None = 1.0, seed: int = 2) -> tuple[float, float]:
    """(share of trials where McNemar's mid-p < ALPHA, mean share of items the two agree on)."""
    rng = np.random.default_rng(seed)
    rejected, agreement = 0, 0.0
    for _ in range(trials):
        a, b = paired_answers(rng, n, accuracy, delta, concentration)
        rejected += mcnemar_midp(a, b) < ALPHA
        agreement += float((a == b).mean())
    return rejected / trials, agreement / trials


def figures() -> dict[str, str]:
    """The bench's name -> value lines (see scripts/bench_eval.py)."""
    false_positive, _ = rejection_rate(2000, delta=0.0, seed=2)
    power, agreement = rejection_rate(1000, delta=0.05, seed=3)
    power_independent, _ = rejection_rate(1000, delta=0.05, concentration=None, seed=4)
    return {"ci_coverage": f"{ci_coverage():.3f}",
            "paired_test_false_positive_rate": f"{false_positive:.3f}",
            "paired_test_power": f"{power:.3f}",
            "paired_test_agreement": f"{agreement:.3f}",
            "paired_test_power_independent": f"{power_independent:.3f}"}
