"""Launching the real entry points from tests: one process, ``torchrun`` or the ``deepspeed``
launcher, on a free port, with one OpenMP thread per process (2-process runs on a 2-core
machine spin otherwise), and optional fault injection (``tests/helpers/faults.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "configs/demo/train_lora.yaml"
FAULTS = ROOT / "tests/helpers/faults.py"
# Small, fast settings every test training run starts from (overrides come after them).
QUICK_TRAIN = ("train.warmup_steps=1", "train.log_every=1", "train.progress=false", "lora.r=4",
               "lora.alpha=8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **extra)


def entry(module: str, nproc: int = 1, launcher: str = "torchrun", faults: tuple = ()) -> list[str]:
    """The command that starts ``python -m MODULE`` (or, with ``faults``, the fault-injecting
    launcher for it) in ``nproc`` processes."""
    target = ["-m", module] if not faults else [str(FAULTS), module, *faults]
    if nproc == 1:
        return [sys.executable, *target]
    if launcher == "deepspeed":  # it appends --local_rank=N to the arguments
        module_flag = ["--module", module] if not faults else [str(FAULTS), module, *faults]
        return [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc),
                "--master_port", str(free_port()), *module_flag]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *target]


def run(cmd: list[str], check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def run_train(model: Path, out: Path, *overrides, data: Path | None = None, nproc: int = 1,
              config: Path = TRAIN_CONFIG, launcher: str = "torchrun", faults: tuple = (),
              check: bool = True) -> subprocess.CompletedProcess:
    """``python -m train CONFIG`` on ``model`` into ``out`` with the quick settings;
    ``data=None``: the data section comes from ``config`` alone (e.g. a mixture)."""
    args = [f"model.path={model}", *([f"data.train={data}"] if data else []),
            f"train.output_dir={out}", *QUICK_TRAIN, *overrides]
    return run(entry("train", nproc, launcher, faults) + [str(config), *args], check)
