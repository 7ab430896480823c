"""eval/stats.py against hand-computed references: the bootstrap interval, McNemar's mid-p,
the paired bootstrap, and the same resamples for every checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval import stats


def test_mcnemar_midp_matches_the_binomial_by_hand():
    # 2 items only the first got right, 8 only the second: X ~ Bin(10, 1/2), k = 2.
    # mid-p = 2 * (P(X < 2) + P(X = 2) / 2) = 2 * (1 + 10 + 45 / 2) / 1024 = 67 / 1024.
    a = [1, 1] + [0] * 8 + [1] * 30 + [0] * 60
    b = [0, 0] + [1] * 8 + [1] * 30 + [0] * 60
    assert stats.mcnemar_midp(a, b) == pytest.approx(67 / 1024, rel=1e-12)
    assert stats.mcnemar_midp(b, a) == pytest.approx(67 / 1024, rel=1e-12)  # two-sided
    # The exact test's p would be 2 * (1 + 10 + 45) / 1024; mid-p is below it by P(X = 2).
    assert 2 * 56 / 1024 - stats.mcnemar_midp(a, b) == pytest.approx(45 / 1024)
    # Balanced discordance: p = 1; no discordance: p = 1; all 30 one way: 2 * 0.5 * 2^-30.
    assert stats.mcnemar_midp([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert stats.mcnemar_midp([1, 0, 1], [1, 0, 1]) == 1.0
    assert stats.mcnemar_midp([0] * 30, [1] * 30) == pytest.approx(2 ** -30)
    # Large n without overflow: 600 vs 500 discordant of 1100.
    big_a = [1] * 600 + [0] * 500
    big_b = [0] * 600 + [1] * 500
    from fractions import Fraction

    exact = float(2 * (sum(math.comb(1100, i) for i in range(500)) + Fraction(math.comb(1100, 500), 2))
                  / 2 ** 1100)
    assert stats.mcnemar_midp(big_a, big_b) == pytest.approx(exact, rel=1e-9)


def test_paired_bootstrap_p():
    a = np.linspace(0, 1, 50)
    assert stats.paired_bootstrap_p(a, a) == 1.0
    assert stats.paired_bootstrap_p(a, a + 0.1) == 0.0               # every item up by 0.1
    rng = np.random.default_rng(0)
    noisy = a + rng.normal(0, 0.3, 50)
    p_small = stats.paired_bootstrap_p(a, noisy)
    assert 0.05 < p_small < 1                                       # noise, not a shift
    assert stats.paired_bootstrap_p(a, noisy + 0.3) < 0.001
    # Deterministic (fixed seed) and symmetric in sign.
    assert stats.paired_bootstrap_p(a, noisy) == p_small == stats.paired_bootstrap_p(noisy, a)


def test_paired_p_picks_the_test_by_the_scores():
    a, b = [1, 1, 0, 0, 1], [0, 1, 1, 1, 1]
    assert stats.paired_p(a, b) == stats.mcnemar_midp(a, b)
    c = [0.5, 1, 0, 0, 1]
    assert stats.paired_p(c, b) == stats.paired_bootstrap_p(c, b)
    with pytest.raises(ValueError, match="same items: 5 vs 4"):
        stats.paired_p(a, b[:4])
    with pytest.raises(ValueError, match="0 or 1"):
        stats.mcnemar_midp(c, b)


def test_bootstrap_ci_width_and_determinism():
    scores = [1.0] * 540 + [0.0] * 360                               # 60% of 900
    low, high = stats.bootstrap_ci(scores)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 900)                        # normal approximation, 0.032
    assert low < 0.6 < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.08)
    assert stats.bootstrap_ci(scores) == (low, high)                 # fixed seed
    assert stats.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    wider = stats.bootstrap_ci(scores, level=0.99)
    assert wider[0] < low and wider[1] > high
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci(scores, level=95)


def test_every_checkpoint_is_resampled_on_the_same_items():
    """The resampled index sets depend on (n, seed) only: a checkpoint that differs from another
    on one item has, in every resample, the other's mean plus that item's weight."""
    a = np.array([1.0] * 50 + [0.0] * 50)
    b = a.copy()
    b[0] = 0.0
    ma = stats._resampled_means(a, 300, stats.SEED)
    mb = stats._resampled_means(b, 300, stats.SEED)
    rng = np.random.default_rng(stats.SEED)
    counts = np.concatenate([(rng.integers(0, 100, size=(min(stats._CHUNK, 300 - s), 100)) == 0).sum(1)
                             for s in range(0, 300, stats._CHUNK)])
    assert np.allclose(ma - mb, counts / 100)


def test_items_key():
    assert stats.items_key(["a", "b"]) == stats.items_key(["a", "b"]) != stats.items_key(["b", "a"])
    assert len(stats.items_key(["a"])) == 16


def test_simulated_checkpoints_have_the_accuracy_they_are_given():
    from eval import stats_sim

    rng = np.random.default_rng(0)
    a, b = stats_sim.paired_answers(rng, 200_000, 0.6, 0.05, 1.0)
    assert a.mean() == pytest.approx(0.60, abs=0.005) and b.mean() == pytest.approx(0.65, abs=0.005)
    a, b = stats_sim.paired_answers(rng, 200_000, 0.6, 0.0, 1.0)
    assert (a == b).mean() == pytest.approx(0.76, abs=0.01)          # 1 - 2 E[p(1-p)] at c = 1
    a, b = stats_sim.paired_answers(rng, 200_000, 0.6, 0.0, None)
    assert (a == b).mean() == pytest.approx(0.52, abs=0.01)          # independent: 0.6^2 + 0.4^2
    # A 30-point difference is always found; a small coverage run is near 95%.
    assert stats_sim.rejection_rate(20, n=300, delta=0.3)[0] == 1.0
    assert 0.85 <= stats_sim.ci_coverage(trials=60, n=300) <= 1.0
