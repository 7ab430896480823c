"""Data-stage figures on the embedded default (tiny processor, synthetic corpus).

  planner_cases, planner_mismatches   token planner vs the real image processor on random sizes
                                      (log-uniform sides, aspect ratios up to 200:1, 3 budgets)
  planner_samples_per_s               planning whole samples from image headers (no decoding)
  encode_samples_per_s                full encoding (decode, resize, tokenise, labels) on 1 core

Run with no arguments. Video shapes, packing and padding efficiency are not measured yet.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.encode import SampleEncoder, VisionBudget  # noqa: E402
from data.planner import TokenPlanner, image_grid, processor_grid  # noqa: E402
from data.processor import build_processor  # noqa: E402
from data.sources import load_llava_json  # noqa: E402
from data.synthetic import generate  # noqa: E402

BUDGETS = [VisionBudget(32 * 32 * 4, 32 * 32 * 64), VisionBudget(64 * 64, 256 * 256),
           VisionBudget(256 * 256, 1024 * 1024)]


def random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng, sizes = random.Random(seed), []
    while len(sizes) < n:
        short = int(math.exp(rng.uniform(0, math.log(1500))))
        aspect = math.exp(rng.uniform(0, math.log(200)))
        long = max(short, min(int(short * aspect), 8000))
        if short * long <= 3_000_000 and long / short <= 200:
            sizes.append((short, long) if rng.random() < 0.5 else (long, short))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    processor = build_processor()

    mismatches = 0
    for i, (h, w) in enumerate(random_sizes(args.cases, seed=0)):
        budget = BUDGETS[i % len(BUDGETS)]
        mismatches += image_grid(h, w, budget) != processor_grid(processor, h, w, budget)

    corpus = generate(Path(tempfile.mkdtemp(prefix="bench_data-")), train_per_task=args.samples // 3,
                      eval_per_task=0)
    samples = load_llava_json(corpus["train"])
    budget = VisionBudget(64 * 64, 256 * 256)
    planner, encoder = TokenPlanner(processor, budget), SampleEncoder(processor, budget)
    t0 = time.perf_counter()
    plans = [planner.plan(s) for s in samples]
    plan_rate = len(samples) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    lengths = [len(encoder.encode(s)["input_ids"]) for s in samples]
    encode_rate = len(samples) / (time.perf_counter() - t0)
    sample_mismatches = sum(p.total != n for p, n in zip(plans, lengths))

    print(f"planner_cases={args.cases}")
    print(f"planner_mismatches={mismatches}")
    print(f"planner_sample_mismatches={sample_mismatches}")
    print(f"planner_samples_per_s={plan_rate:.1f}")
    print(f"encode_samples_per_s={encode_rate:.1f}")


if __name__ == "__main__":
    main()
