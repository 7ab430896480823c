"""Optional experiment trackers (``logging.report_to``): wandb and tensorboard.

Both are an install extra (``pip install qwen3vl-tune[logging]``), so they are imported only
when asked for; ``check_trackers`` lets a missing one fail before any data or model is loaded,
not after the first logged step. Only the main process creates trackers (``ProgressLog(enabled=...)``).

- wandb runs offline by default (``logging.wandb_mode``; sync later with ``wandb sync``) and
  writes under ``<output_dir>/wandb``. The run id is kept in ``<output_dir>/wandb/run_id`` so a
  resumed job continues the same run.
- tensorboard writes event files under ``<output_dir>/tensorboard``.
Every metric of metrics.jsonl is logged under ``train/<name>``; the run config goes to wandb's
config and to a tensorboard text entry.
"""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path

MODULES = {"wandb": "wandb", "tensorboard": "tensorboard"}
INSTALL_HINT = "pip install qwen3vl-tune[logging]"


def check_trackers(report_to: list[str]) -> None:
    """Raise at start when a requested tracker is unknown or not installed."""
    for name in report_to:
        if name not in MODULES:
            raise ValueError(f"logging.report_to: unknown tracker {name!r}; choose from {sorted(MODULES)}")
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise ImportError(f"logging.report_to lists {name!r} but {MODULES[name]} is not installed: "
                              f"run `{INSTALL_HINT}`, or remove {name!r} from logging.report_to") from None


class Trackers:
    """The trackers of one run; ``log`` sends a flat dict of numbers at a step."""

    def __init__(self, logging_cfg, output_dir: Path, run_config: dict | None = None):
        check_trackers(logging_cfg.report_to)
        self.output_dir = Path(output_dir)
        self.run_name = logging_cfg.run_name or self.output_dir.resolve().name
        self.wandb_run = self.tb = None
        if "wandb" in logging_cfg.report_to:
            self.wandb_run = self._start_wandb(logging_cfg, run_config or {})
        if "tensorboard" in logging_cfg.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
            if run_config:
                self.tb.add_text("config", "```\n" + json.dumps(run_config, indent=2) + "\n```", 0)

    def _start_wandb(self, cfg, run_config: dict):
        import wandb

        folder = self.output_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        # console="off": wandb leaves stdout/stderr alone (the console is ours, and torchrun's).
        return wandb.init(project=cfg.wandb_project, name=self.run_name, id=run_id, resume="allow",
                          dir=str(self.output_dir), mode=cfg.wandb_mode, config=run_config,
                          settings=wandb.Settings(console="off", silent=True))

    def log(self, metrics: dict, step: int) -> None:
        scalars = {f"train/{k}": float(v) for k, v in metrics.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
