"""``python -m train CONFIG.yaml [key=value ...]`` (also under torchrun and the deepspeed launcher)."""

from __future__ import annotations

import argparse
import sys

from data.configio import ConfigError, load_config
from data.samples import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/demo/train_lora.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.lr=1e-4")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    args = parser.parse_args(argv)

    from train.config import Config

    try:
        cfg = load_config(Config, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from train.trainer import train

    try:
        final = train(cfg)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    print(f"[train] done: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
