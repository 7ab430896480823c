"""Faults in checkpoint files and writes, for tests/test_run_safety.py and the reliability
benchmark: a pickle that would run code when loaded, a disk that fills up half-way through a
save (through the engine, or through ``train.checkpoint.write_state``), and a small stand-in
engine that writes what ``train.checkpoint.save_checkpoint`` asks of one, in milliseconds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch


class CreatesFile:
    """Unpickling this calls open(path, "w"), creating ``path``: what a crafted checkpoint file
    could do. ``torch.save({"x": CreatesFile(p)}, f)`` writes such a file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def disk_full(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class SmallEngine:
    """What save_checkpoint asks of an engine (``save_weights(dir)``, ``save(dir)``), writing
    small files; ``full_disk_in`` ("save_weights" or "save") makes that write stop half-way
    with ENOSPC, as a full disk does."""

    def __init__(self, full_disk_in: str | None = None):
        self.full_disk_in = full_disk_in

    def save_weights(self, folder: Path) -> bool:
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"w" * 4096)
        self._full_disk("save_weights", folder / "adapter_model.safetensors")
        return True

    def save(self, folder: Path) -> None:
        torch.save({"state": torch.zeros(8)}, folder / "optimizer.pt")
        self._full_disk("save", folder / "optimizer.pt")

    def _full_disk(self, where: str, path: Path) -> None:
        if where == self.full_disk_in:
            raise disk_full(path)


def full_disk_on(name: str):
    """A stand-in for ``train.checkpoint.write_state`` that fails on the file called ``name``
    after writing part of it (patch it in with monkeypatch.setattr)."""
    def write_state(obj, path: Path) -> None:
        if Path(path).name == name:
            Path(path).write_bytes(b"partial")
            raise disk_full(path)
        torch.save(obj, path)
    return write_state
