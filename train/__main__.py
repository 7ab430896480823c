"""``python -m train CONFIG.yaml [key=value ...]`` (also under torchrun and the deepspeed launcher).

Exit codes: 0 done, 2 bad config, 3 bad data (``data.configio.config_main``), 1 a run refused
or stopped with a message that says why and what to change (``train.errors.TrainError``: an
output folder in use or holding another run, an unsafe or mismatched checkpoint, a full disk,
NaN/inf); the message is printed alone, without a traceback.
"""

from __future__ import annotations

import os
import sys

from data.configio import config_main
from train.config import Config


def run(cfg: Config, hooks=None) -> None:
    from train.errors import TrainError
    from train.trainer import train  # imported after the config is known to be good

    try:
        final = train(cfg, hooks)
    except TrainError as e:
        sys.exit(f"[train] error: {str(e).removeprefix('[train] ')}")
    if os.environ.get("RANK", "0") == "0":
        print(f"[train] done: {final}")


if __name__ == "__main__":
    sys.exit(config_main("python -m train", __doc__, Config, run))
