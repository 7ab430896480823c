"""Mixtures: several sources, each drawn in proportion to its weight, in a seeded order.

An epoch of the mixture holds as many samples as all sources together; source ``i``
contributes ``round(total * w_i / sum(w))`` of them (at least one). Each source is read as an
endless stream of its own shuffles (shuffle 0, shuffle 1, ...), and epoch ``e`` takes the next
slice of that stream, so an up-weighted source repeats only after all its samples were seen
and a down-weighted one shows different samples each epoch (a source drawn exactly once per
epoch is simply taken whole). The epoch is then shuffled with seed ``seed + epoch``, so a
single source is visited in ``randperm(n, seed + epoch)`` order.
Everything is a pure function of (seed, epoch): a resumed run sees the same remaining samples.
"""

from __future__ import annotations

import torch


class Mixture:
    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("a mixture needs one weight per source and at least one source")
        empty = [i for i, n in enumerate(sizes) if n == 0]
        if empty:
            raise ValueError(f"source {empty[0]} has no samples")
        self.sizes, self.seed = list(sizes), seed
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        total, weight_sum = sum(sizes), sum(weights)
        self.per_epoch = [max(1, round(total * w / weight_sum)) for w in weights]

    def __len__(self) -> int:
        return sum(self.per_epoch)

    def epoch_order(self, epoch: int) -> list[int]:
        """Global sample indices (sources concatenated in config order) for this epoch."""
        picks: list[int] = []
        for source, (n, count) in enumerate(zip(self.sizes, self.per_epoch)):
            if count == n:  # exactly once per epoch: all of it (the shuffle below orders it)
                picks += range(self.offsets[source], self.offsets[source] + n)
                continue
            first, last = epoch * count, (epoch + 1) * count
            for shuffle in range(first // n, (last - 1) // n + 1):
                perm = self._shuffle(source, shuffle, n)
                lo, hi = max(first - shuffle * n, 0), min(last - shuffle * n, n)
                picks += [self.offsets[source] + i for i in perm[lo:hi]]
        g = torch.Generator().manual_seed(self.seed + epoch)
        return [picks[i] for i in torch.randperm(len(picks), generator=g).tolist()]

    def _shuffle(self, source: int, k: int, n: int) -> list[int]:
        g = torch.Generator().manual_seed((self.seed * 7_919 + source) * 104_729 + k)
        return torch.randperm(n, generator=g).tolist()

    def shares(self) -> list[float]:
        return [c / len(self) for c in self.per_epoch]
