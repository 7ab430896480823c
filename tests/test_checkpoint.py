"""Checkpoint retention: the last N complete checkpoints, plus the best one when asked."""

from __future__ import annotations

import torch

from train.checkpoint import resolve_resume, stale_checkpoints
from train.layout import list_checkpoints


def make(root, step, loss, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir()
    if complete:
        torch.save({"step": step, "loss": loss}, folder / "trainer_state.pt")
    return folder


def test_keep_last_and_best(tmp_path):
    for step, loss in [(100, 2.0), (200, 0.5), (300, 1.0), (400, 1.5)]:
        make(tmp_path, step, loss)
    make(tmp_path, 500, None, complete=False)  # a save cut short: not a checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"checkpoint-{s}" for s in (100, 200, 300, 400)]
    assert [p.name for p in stale_checkpoints(tmp_path, keep_last=2, keep_best=False)] == \
        ["checkpoint-100", "checkpoint-200"]
    # checkpoint-200 has the lowest train loss: kept beside the last two.
    assert [p.name for p in stale_checkpoints(tmp_path, keep_last=2, keep_best=True)] == ["checkpoint-100"]
    assert resolve_resume(tmp_path, "auto").name == "checkpoint-400"
