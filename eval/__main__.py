"""``python -m eval CONFIG.yaml [key=value ...]``: score checkpoints on benchmark tasks."""

from __future__ import annotations

import sys

from data.configio import config_main
from eval.config import EvalConfig


def run(cfg: EvalConfig) -> None:
    from eval.runner import evaluate  # imported after the config is known to be good

    try:
        evaluate(cfg)
    except FileNotFoundError as e:  # a checkpoint or data path that is not there: one line
        raise SystemExit(f"eval error: {e}") from None


if __name__ == "__main__":
    sys.exit(config_main("python -m eval", __doc__, EvalConfig, run))
