"""The token planner agrees with the processor exactly, before any pixel is decoded."""

from __future__ import annotations

import random

from data.encode import SampleEncoder, VisionBudget
from data.planner import TokenPlanner, image_grid, processor_grid
from data.sources import load_llava_json


def test_image_grid_matches_processor_on_random_sizes(processor):
    rng = random.Random(0)
    budgets = [VisionBudget(32 * 32 * 4, 32 * 32 * 64), VisionBudget(64 * 64, 256 * 256),
               VisionBudget(256 * 256, 512 * 512)]
    cases = []
    for _ in range(300):
        aspect = rng.choice([1, 1, 2, 5, 20, 100, 199])
        short = rng.randint(1, 300)
        long = min(short * aspect + rng.randint(0, aspect), 4000)
        h, w = (short, long) if rng.random() < 0.5 else (long, short)
        if max(h, w) / min(h, w) <= 200:
            cases.append((h, w, rng.choice(budgets)))
    mismatches = []
    for h, w, budget in cases:
        expected = processor_grid(processor, h, w, budget)
        if image_grid(h, w, budget) != expected:
            mismatches.append((h, w, budget, expected))
    assert len(cases) > 250 and not mismatches, mismatches[:5]


def test_plan_equals_encoded_length(processor, corpus):
    budget = VisionBudget(64 * 64, 256 * 256)
    planner, encoder = TokenPlanner(processor, budget), SampleEncoder(processor, budget)
    for sample in load_llava_json(corpus["train"])[:12]:
        plan = planner.plan(sample)
        encoded = encoder.encode(sample)
        assert plan.total == len(encoded["input_ids"])
        assert plan.visual_tokens == int((encoded["input_ids"] == processor.image_token_id).sum())
