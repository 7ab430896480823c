"""Fault injection through the runs' explicit hooks (``train.hooks.TrainHooks``,
``eval.runner.EvalHooks``), for the tests and the benchmarks that prove resume and NaN handling:

    python tests/helpers/faults.py train CONFIG [key=value ...] [--kill-at-step N] [--nan-steps 2,5]
    python tests/helpers/faults.py eval CONFIG [key=value ...] [--kill-after-batches N]

Also under ``torchrun ... tests/helpers/faults.py train ...``. A kill is a SIGKILL (no cleanup,
as the OOM killer or a preempted node would do it); training faults act on the last rank only,
so the other ranks must cope with a peer that dies or goes NaN alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval.runner import EvalHooks  # noqa: E402
from train.hooks import TrainHooks  # noqa: E402


class TrainFaults(TrainHooks):
    def __init__(self, kill_at_step: int | None = None, nan_steps: set[int] = frozenset()):
        self.kill_at_step, self.nan_steps = kill_at_step, set(nan_steps)

    def step_begin(self, step, rank, world_size):
        if step == self.kill_at_step and rank == world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def loss(self, step, loss, rank, world_size):
        return loss * float("nan") if step in self.nan_steps and rank == world_size - 1 else loss


class EvalFaults(EvalHooks):
    def __init__(self, kill_after_batches: int | None = None):
        self.kill_after_batches, self.batches = kill_after_batches, 0

    def batch_written(self):
        self.batches += 1
        if self.kill_after_batches and self.batches >= self.kill_after_batches:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    from data.configio import config_main

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("entry", choices=("train", "eval"))
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--nan-steps", default="")
    parser.add_argument("--kill-after-batches", type=int, default=None)
    args, rest = parser.parse_known_args(argv)
    if args.entry == "train":
        from train.__main__ import run
        from train.config import Config

        hooks = TrainFaults(args.kill_at_step, {int(s) for s in args.nan_steps.split(",") if s})
        return config_main("faults train", __doc__, Config, lambda cfg: run(cfg, hooks), rest)
    from eval.config import EvalConfig
    from eval.runner import evaluate

    hooks = EvalFaults(args.kill_after_batches)
    return config_main("faults eval", __doc__, EvalConfig, lambda cfg: evaluate(cfg, hooks), rest)


if __name__ == "__main__":
    sys.exit(main())
