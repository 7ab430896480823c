"""``python -m train CONFIG.yaml [key=value ...]`` (also under torchrun and the deepspeed launcher)."""

from __future__ import annotations

import os
import sys

from data.configio import config_main
from train.config import Config


def run(cfg: Config, hooks=None) -> None:
    from train.trainer import train  # imported after the config is known to be good

    final = train(cfg, hooks)
    if os.environ.get("RANK", "0") == "0":
        print(f"[train] done: {final}")


if __name__ == "__main__":
    sys.exit(config_main("python -m train", __doc__, Config, run))
