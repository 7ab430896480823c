"""Signal versus noise: confidence intervals of a score and paired tests between two
checkpoints scored on the same items (numpy only).

- ``bootstrap_ci``: the 95% percentile bootstrap interval of a mean score, resampling items with
  a fixed seed. The resampled index sets depend only on (n, seed), so every checkpoint scored on
  the same n items (in the benchmark's order) is resampled on the same item sets.
- ``mcnemar_midp``: McNemar's test for two 0/1 score lists on the same items, exact binomial on
  the discordant pairs, two-sided, with the mid-p correction (the exact test is conservative:
  at a 5% level it rejects a true null well under 5% of the time at the item counts of
  benchmarks; mid-p keeps close to the nominal level with more power).
- ``paired_bootstrap_p``: for scores that are not 0/1 (ANLS, means): the two-sided p-value of
  the mean paired difference by bootstrap, centred under the null (shifted to mean 0).
- ``paired_p``: whichever of the two fits the scores; ``items_key``: the hash that says whether
  two score lists are over the same items.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

SEED = 20260  # one fixed seed: reruns and other checkpoints draw the same resamples
RESAMPLES = 2000
LEVEL = 0.95
ALPHA = 0.05  # the significance level the leaderboard marks deltas at
_CHUNK = 250  # resamples drawn at a time (bounded memory on 5,000-item benchmarks)


def items_key(ids: list[str]) -> str:
    """A short hash of the ordered item ids: equal keys mean item-by-item comparable scores."""
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


def _scores(values, name: str = "scores") -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"{name}: expected a non-empty list of finite numbers")
    return array


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, means = values.size, []
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(scores, level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float]:
    """(low, high) of the percentile bootstrap interval of the mean of ``scores``."""
    values = _scores(scores)
    if not 0 < level < 1:
        raise ValueError(f"level {level}: must be in (0, 1)")
    means = _resampled_means(values, resamples, seed)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def is_binary(scores) -> bool:
    values = np.asarray(scores, dtype=float)
    return bool(np.isin(values, (0.0, 1.0)).all())


def _binom_pmf(k: int, n: int) -> float:
    """P(X = k) for X ~ Binomial(n, 1/2), in log space (no overflow for large n)."""
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2))


def mcnemar_midp(a, b) -> float:
    """Two-sided mid-p of McNemar's exact test for paired 0/1 scores ``a`` and ``b``."""
    a, b = _paired(a, b)
    if not (is_binary(a) and is_binary(b)):
        raise ValueError("mcnemar_midp: scores must be 0 or 1 (use paired_bootstrap_p)")
    only_b = int(((a == 0) & (b == 1)).sum())
    only_a = int(((a == 1) & (b == 0)).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    below = sum(_binom_pmf(i, n) for i in range(k))  # P(X < k)
    return float(min(1.0, 2 * (below + 0.5 * _binom_pmf(k, n))))


def paired_bootstrap_p(a, b, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided p-value that the mean of ``b - a`` is 0: the share of bootstrap means of the
    differences, centred at 0, at least as far from 0 as the observed mean."""
    a, b = _paired(a, b)
    diff = b - a
    observed = diff.mean()
    if np.all(np.abs(diff - observed) <= 1e-12):  # no spread: any difference is exact
        return 1.0 if observed == 0 else 0.0
    centred = _resampled_means(diff - observed, resamples, seed)
    extreme = int((np.abs(centred) >= abs(observed) - 1e-12).sum())
    return float((extreme + 1) / (resamples + 1))


def paired_p(a, b) -> float:
    """McNemar mid-p for 0/1 scores (exact match, accuracy, Acc@IoU), else a paired bootstrap."""
    return mcnemar_midp(a, b) if is_binary(a) and is_binary(b) else paired_bootstrap_p(a, b)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _scores(a, "first scores"), _scores(b, "second scores")
    if a.size != b.size:
        raise ValueError(f"paired scores need the same items: {a.size} vs {b.size} scores")
    return a, b


def entries_pvalue(a: dict | None, b: dict | None) -> float | None:
    """p-value of the paired test between two leaderboard entries' item scores (``paired_p``);
    None unless both have item scores over the same items."""
    if not a or not b or a.get("item_scores") is None or b.get("item_scores") is None \
            or a.get("items") != b.get("items"):
        return None
    return paired_p(a["item_scores"], b["item_scores"])
