"""The loss-curve PNG written at the end of a run, from ``metrics.jsonl`` alone.

Reading the log file (not in-memory state) means a resumed run plots its whole history, and the
plot can be redrawn for any finished run: ``python -m train.plots OUTPUT_DIR``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """Logged rows by step; a step logged twice (a run resumed from an earlier checkpoint)
    keeps its latest row."""
    rows: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def plot_loss_curve(metrics_path: Path, out_png: Path) -> Path | None:
    """Loss (top) and learning rate(s) (bottom) against the step; None when nothing was logged."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend, no figure registry

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(8, 6))
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    losses = [r["loss"] if r.get("loss") is not None else math.nan for r in rows]
    ax_loss.plot(steps, losses, marker="o" if len(rows) < 30 else None, lw=1.5, label="train loss")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    # One curve per parameter group when the groups' learning rates differ (lr_vision, ...).
    lr_keys = sorted({k for r in rows for k in r if k.startswith("lr_")}) or ["lr"]
    for key in lr_keys:
        ax_lr.plot(steps, [r.get(key, math.nan) for r in rows], lw=1.2,
                   label=key[3:] if key != "lr" else "lr")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)
    ax_lr.legend()
    fig.suptitle(Path(metrics_path).resolve().parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return Path(out_png)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(plot_loss_curve(folder / "metrics.jsonl", folder / "loss_curve.png"))
