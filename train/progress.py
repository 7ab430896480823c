"""Console progress and the metrics log (``metrics.jsonl``, one JSON object per logged step)."""

from __future__ import annotations

import json
import time
from pathlib import Path


class ProgressLog:
    def __init__(self, path: Path, cfg, start_step: int, enabled: bool = True):
        self.enabled, self.every, self.max_steps = enabled, cfg.log_every, cfg.max_steps
        self.window: list[dict] = []
        self.skipped_total = 0
        self.t_start = time.perf_counter()
        self.bar = None
        if not enabled:
            return
        self.file = open(path, "a")
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train",
                            dynamic_ncols=True, mininterval=1.0)

    def step(self, step: int, **m) -> None:
        if not self.enabled:
            return
        self.skipped_total += m["skipped"]
        self.window.append(m)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", refresh=False)
        if step % self.every == 0 or step == self.max_steps:
            w = self.window
            seconds = sum(x["seconds"] for x in w)
            record = {
                "step": step, "loss": sum(x["loss"] for x in w) / len(w), "lr": m["lr"],
                "grad_norm": m["grad_norm"], "tokens_per_s": sum(x["tokens"] for x in w) / seconds,
                "tokens_per_step": sum(x["tokens"] for x in w) / len(w),
                "step_s": seconds / len(w), "skipped_samples": self.skipped_total,
                "elapsed_s": time.perf_counter() - self.t_start,
            }
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            line = (f"step {step}/{self.max_steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                    f"grad_norm {record['grad_norm']:.3f} tok/s {record['tokens_per_s']:.0f}"
                    + (f" skipped {self.skipped_total}" if self.skipped_total else ""))
            (self.bar.write if self.bar is not None else print)(line)
            self.window = []

    def close(self) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.file.close()
