"""Launching the real entry points from tests (and the benchmark scripts): one process,
``torchrun`` or the ``deepspeed`` launcher, on a free port, with one OpenMP thread per process
(2-process runs on a 2-core machine spin otherwise), and optional fault injection
(``tests/helpers/faults.py``). Every multi-process launch takes its port from ``free_port``."""

from __future__ import annotations

import json
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
    """A TCP port nothing listens on now (the OS picks it), for a launcher's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **extra)


def entry(module: str, nproc: int = 1, launcher: str = "torchrun", faults: tuple = ()) -> list[str]:
    """The command that starts ``python -m MODULE`` (or, with ``faults``, the fault-injecting
    launcher for it) in ``nproc`` processes. MODULE may be a helper script run as a module
    (``tests.helpers.zero3_checkpoint``)."""
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
    """``cmd`` from the repository root with ``env()``; ``check``: fail the test, showing the
    output's tail, unless it exits 0."""
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


def train_here(model: Path, out: Path, *overrides, data: Path | None = None,
               config: Path = TRAIN_CONFIG) -> None:
    """``run_train``'s run with one process, in this one: no interpreter to start, for the
    reference runs that multi-process runs are compared with (within a tolerance: this
    process's thread count is not the launches' one, so sums may round differently)."""
    from data.configio import load_config
    from train.config import Config
    from train.trainer import train

    args = [f"model.path={model}", *([f"data.train={data}"] if data else []),
            f"train.output_dir={out}", *QUICK_TRAIN, *overrides]
    train(load_config(Config, config, args))


def run_eval(config: Path, nproc: int = 1, faults: tuple = (), check: bool = True,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m eval CONFIG`` in ``nproc`` processes (``torchrun`` when more than one); with
    ``faults`` (e.g. ``("--kill-after-batches", "1")``) the fault-injecting launcher instead."""
    return run(entry("eval", nproc, faults=faults) + [str(config)], check, timeout)


def metrics(out: Path) -> list[dict]:
    """The rows of a training run's ``metrics.jsonl``, in the order they were written."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    """Step -> loss of a training run; a step logged twice (killed, then resumed) keeps the
    later row."""
    return {r["step"]: r["loss"] for r in metrics(out)}
