"""Console progress, the metrics log (``metrics.jsonl``) and the trackers, fed once per step.

The trainer reports each optimizer step (``ProgressLog.step``); every ``train.log_every`` steps
the window since the last log becomes one row of metrics.jsonl - one JSON object per line -
which also goes to the console and to wandb/tensorboard (``train/trackers.py``). At ``close``
the run's loss curve is drawn from the file (``train/plots.py``).

A row holds: step, run_id (the run that wrote it: a resumed run keeps its id; another run's
rows never land here, see train/run_folder.py), loss (mean of the window's finite losses),
collapsed (a step of the window looked collapsed, train/health.py), lr (and lr_<group> when the
parameter groups' rates differ), grad_norm (last step), tokens_per_s, tokens_per_step,
visual_tokens_per_step, step_s, skipped_samples and nan_steps_skipped (run totals), elapsed_s,
moe/<name> (window means of the MoE extras; names already starting with moe/ are kept), model_tflops_per_s (per device) and mfu when FLOPs
are reported and the peak is known, max_mem_gib on CUDA. Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from train.plots import plot_loss_curve
from train.qwen3_vl.flops import mfu as utilisation
from train.trackers import Trackers


def _finite(x):
    return x if x is None or not isinstance(x, float) or math.isfinite(x) else None


class ProgressLog:
    """``path``: the metrics.jsonl file; ``cfg``: the train section (log_every, max_steps,
    progress). Optional: ``logging`` (the logging section: trackers, loss plot), ``run_config``
    (logged to the trackers), ``peak_flops`` (per device, ``train.qwen3_vl.flops.peak_flops``)
    and ``world_size`` for MFU. Only the main process should pass ``enabled=True``."""

    def __init__(self, path: Path, cfg, start_step: int, enabled: bool = True, *, logging=None,
                 run_config: dict | None = None, peak_flops: float | None = None, world_size: int = 1):
        self.enabled, self.every, self.max_steps = enabled, cfg.log_every, cfg.max_steps
        self.run_id = (run_config or {}).get("run_id")
        self.path, self.logging = Path(path), logging
        self.peak, self.world_size = peak_flops, world_size
        self.window: list[dict] = []
        self.skipped_total = self.nan_total = 0
        self.per_group_lr = False  # sticky: once the groups' rates differ, log each for the run
        self.t_start = time.perf_counter()
        self.bar = self.trackers = None
        if not enabled:
            return
        if logging is not None and logging.report_to:
            self.trackers = Trackers(logging, self.path.parent, run_config)
        self.file = open(path, "a")
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train",
                            dynamic_ncols=True, mininterval=1.0)

    def step(self, step: int, *, loss: float, lr: float, grad_norm: float, tokens: int,
             seconds: float, skipped: int = 0, lrs: dict[str, float] | None = None,
             visual_tokens: int = 0, nan_skipped: bool = False, flops: float | None = None,
             moe: dict[str, float] | None = None, collapsed: bool = False,
             objective: dict[str, float] | None = None) -> None:
        """One optimizer step, summed over ranks: ``tokens`` / ``visual_tokens`` (non-padding
        tokens, of which visual), ``skipped`` (samples replaced this step), ``flops``
        (``StepFlops.step_flops`` summed over micro-batches and ranks); ``lrs``: each param
        group's lr by name; ``nan_skipped``: the update was skipped for a NaN/inf loss or
        gradient; ``moe``: scalars such as aux_loss, z_loss, expert-load statistics;
        ``collapsed``: the run looked collapsed as of this step (``train.health``);
        ``objective``: the objective's own statistics (DPO rewards), logged under their names."""
        if not self.enabled:
            return
        self.skipped_total += skipped
        self.nan_total += int(nan_skipped)
        if lrs and len(set(lrs.values())) > 1:
            self.per_group_lr = True
        self.window.append(dict(loss=loss, lr=lr, lrs=lrs or {}, grad_norm=grad_norm, tokens=tokens,
                                seconds=seconds, visual_tokens=visual_tokens, flops=flops,
                                moe=moe or {}, nan=nan_skipped, collapsed=collapsed,
                                objective=objective or {}))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if step % self.every == 0 or step == self.max_steps:
            record = self._record(step)
            self.file.write(json.dumps({k: _finite(v) for k, v in record.items()}) + "\n")
            self.file.flush()
            if self.trackers is not None:
                self.trackers.log({k: v for k, v in record.items() if _finite(v) is not None}, step)
            (self.bar.write if self.bar is not None else print)(self._line(record))
            self.window = []

    def _record(self, step: int) -> dict:
        w, last = self.window, self.window[-1]
        seconds = sum(x["seconds"] for x in w)
        losses = [x["loss"] for x in w if not x["nan"] and math.isfinite(x["loss"])]
        record = {"step": step, "run_id": self.run_id,
                  "loss": sum(losses) / len(losses) if losses else None, "lr": last["lr"],
                  "collapsed": any(x["collapsed"] for x in w)}
        if self.per_group_lr:
            record.update({f"lr_{name}": value for name, value in last["lrs"].items()})
        record.update({
            "grad_norm": last["grad_norm"], "tokens_per_s": sum(x["tokens"] for x in w) / seconds,
            "tokens_per_step": sum(x["tokens"] for x in w) / len(w),
            "visual_tokens_per_step": sum(x["visual_tokens"] for x in w) / len(w),
            "step_s": seconds / len(w), "skipped_samples": self.skipped_total,
            "nan_steps_skipped": self.nan_total, "elapsed_s": time.perf_counter() - self.t_start,
        })
        for key in dict.fromkeys(k for x in w for k in x["moe"]):
            values = [float(x["moe"][key]) for x in w if key in x["moe"]]
            record[key if key.startswith("moe/") else f"moe/{key}"] = sum(values) / len(values)
        for key in dict.fromkeys(k for x in w for k in x["objective"]):
            values = [float(x["objective"][key]) for x in w if key in x["objective"]]
            record[key] = sum(values) / len(values)
        if all(x["flops"] is not None for x in w):
            flops = sum(x["flops"] for x in w)
            record["model_tflops_per_s"] = flops / seconds / self.world_size / 1e12
            if self.peak:
                record["mfu"] = utilisation(flops, seconds, self.peak, self.world_size)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return record

    def _line(self, r: dict) -> str:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "n/a"
        grad_norm = f"{r['grad_norm']:.3f}" if r["grad_norm"] is not None else "n/a"
        parts = [f"step {r['step']}/{self.max_steps}", f"loss {loss}", f"lr {r['lr']:.2e}",
                 f"grad_norm {grad_norm}", f"tok/s {r['tokens_per_s']:.0f}"]
        if r["visual_tokens_per_step"]:
            parts.append(f"vis_tok/step {r['visual_tokens_per_step']:.0f}")
        if "mfu" in r:
            parts.append(f"mfu {100 * r['mfu']:.1f}%")
        if "moe/aux_loss" in r:
            parts.append(f"aux {r['moe/aux_loss']:.4f}")
        if "max_mem_gib" in r:
            parts.append(f"mem {r['max_mem_gib']:.1f}GiB")
        if self.skipped_total:
            parts.append(f"skipped {self.skipped_total}")
        if self.nan_total:
            parts.append(f"nan_steps {self.nan_total}")
        if r["collapsed"]:
            parts.append("collapsed")
        return " ".join(parts)

    def close(self) -> Path | None:
        """Flush and close; returns the loss-curve PNG when one was drawn."""
        if not self.enabled:
            return None
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.trackers is not None:
            self.trackers.close()
        if self.logging is not None and self.logging.loss_plot:
            return plot_loss_curve(self.path, self.path.parent / "loss_curve.png")
        return None
