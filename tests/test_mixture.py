"""Mixture weights, the batch plan (fixed, length-grouped, packed), rank sharding and the
step-exact resume of the sampler."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from data.mixture import Mixture
from train.data import BatchPlan, StepBatchSampler


def test_weights_set_each_sources_share_of_an_epoch():
    mix = Mixture([100, 50, 10], [1.0, 1.0, 2.0], seed=0)
    assert len(mix) == 160 and mix.per_epoch == [40, 40, 80]
    order = mix.epoch_order(0)
    by_source = Counter(0 if i < 100 else 1 if i < 150 else 2 for i in order)
    assert by_source == {0: 40, 1: 40, 2: 80}


def test_sources_cycle_through_all_samples_before_repeating():
    mix = Mixture([100, 10], [1.0, 10.0], seed=3)  # source 0: 10 per epoch; source 1: 100
    seen0 = [i for e in range(10) for i in mix.epoch_order(e) if i < 100]
    assert sorted(seen0) == list(range(100))  # down-weighted: 10 epochs cover it exactly once
    counts1 = Counter(i for i in mix.epoch_order(0) if i >= 100)
    assert set(counts1.values()) == {10}  # up-weighted: every sample 10 times, none more


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a, b = Mixture([30, 20], [1, 1], seed=5), Mixture([30, 20], [1, 1], seed=5)
    assert a.epoch_order(2) == b.epoch_order(2)
    assert a.epoch_order(1) != a.epoch_order(2)
    assert Mixture([30, 20], [1, 1], seed=6).epoch_order(2) != a.epoch_order(2)


def _plan(**kw):
    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(300)]
    return BatchPlan(Mixture([200, 100], [1.0, 0.5], seed=1), seed=1, lengths=lengths, **kw), lengths


@pytest.mark.parametrize("kw", [dict(batch_size=4), dict(batch_size=4, group_by_length=True),
                                dict(batch_size=1, pack_tokens=1024)])
def test_resumed_sampler_yields_exactly_the_remaining_batches(kw):
    plan, _ = _plan(**kw)
    full = list(StepBatchSampler(plan, grad_accum=2, world_size=1, rank=0, max_steps=200))
    for start in (1, 37, 113, 199):  # some of these fall after an epoch boundary
        resumed = list(StepBatchSampler(plan, 2, 1, 0, max_steps=200, start_step=start))
        assert resumed == full[start * 2:]


def test_ranks_share_each_step_without_overlap():
    plan, _ = _plan(batch_size=1, pack_tokens=1024)
    one = list(StepBatchSampler(plan, grad_accum=1, world_size=1, rank=0, max_steps=20))
    ranks = [list(StepBatchSampler(plan, 1, 2, r, max_steps=10)) for r in (0, 1)]
    assert [b for pair in zip(*ranks) for b in pair] == one  # rank r takes every other row


def test_packed_rows_respect_the_budget_and_fill_it():
    plan, lengths = _plan(batch_size=1, pack_tokens=1024)
    rows = plan.epoch(0)
    assert all(sum(lengths[i] for i in row) <= 1024 for row in rows)
    packed = [i for r in rows for i in r]
    assert len(packed) == 300  # the whole epoch: weights 1 : 0.5 of 300 -> 200 + 100
    assert sum(i < 200 for i in packed) == 200
    assert sum(lengths[i] for r in rows for i in r) / (len(rows) * 1024) > 0.97


def test_length_grouping_reduces_padding():
    plain, lengths = _plan(batch_size=8)
    grouped, _ = _plan(batch_size=8, group_by_length=True)

    def padding_efficiency(batches):
        return sum(lengths[i] for b in batches for i in b) / sum(
            len(b) * max(lengths[i] for i in b) for b in batches)

    assert padding_efficiency(grouped.epoch(0)) > padding_efficiency(plain.epoch(0)) + 0.2


def test_a_single_source_is_visited_in_a_plain_seeded_permutation():
    import torch

    expected = torch.randperm(50, generator=torch.Generator().manual_seed(3 + 2)).tolist()
    assert Mixture([50], [1.0], seed=3).epoch_order(2) == expected
