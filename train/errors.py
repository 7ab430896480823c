"""Errors that end a training run with one message that says it all: what happened, which
file or key, and what to change. ``python -m train`` prints such a message alone (no
traceback, exit code 1); anything else still shows its traceback, since it is a bug."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A run refused or stopped for a reason its message explains in full."""


class RunFolderError(TrainError):
    """``train.output_dir`` cannot be used as asked (a previous run in it, another run using
    it, a path in the config that does not exist)."""


class CheckpointError(TrainError):
    """A checkpoint cannot be written (disk full) or read (unsafe pickle, another config)."""


class NonFiniteError(TrainError, FloatingPointError):
    """NaN/inf in the loss, the gradients or the weights stopped the run."""
