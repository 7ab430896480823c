"""Points where a caller acts on a training run from outside the loop. ``python -m train``
passes none; tests and benchmarks pass fault injectors (``tests/helpers/faults.py``) to prove
that a killed run resumes and that a NaN step is skipped, through the same code users run."""

from __future__ import annotations


class TrainHooks:
    """No-ops by default; subclass and override."""

    def step_begin(self, step: int, rank: int, world_size: int) -> None:
        """Called on every rank as optimizer step ``step`` (1-based) begins."""

    def loss(self, step: int, loss, rank: int, world_size: int):
        """The loss of a micro-batch of ``step`` before the NaN vote; returns the loss to use."""
        return loss
