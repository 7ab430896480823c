"""``python -m eval CONFIG.yaml [key=value ...]``: score checkpoints on benchmark tasks."""

from __future__ import annotations

import argparse
import sys

from data.configio import ConfigError, load_config
from data.samples import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/demo/eval.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. generation.batch_size=8")
    args = parser.parse_args(argv)

    from eval.config import EvalConfig

    try:
        cfg = load_config(EvalConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from eval.runner import evaluate

    try:
        evaluate(cfg)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
