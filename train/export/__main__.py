"""``python -m train.export CHECKPOINT --out DIR``: a training checkpoint as a plain HF folder.

Prints ``export_logits_max_abs_diff=`` (reloaded export vs the training-time model on a fixed
image + text sample) and ``export_generation_equal=``; exits 1 when greedy generation differs,
2 when the input is not something it can export (the message says what was expected) or holds
a file that could run code when loaded (``train.safeload``).
"""

from __future__ import annotations

import argparse
import sys

from train.errors import TrainError
from train.export import ExportMismatch, export
from train.modeling import DTYPES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.export",
        description="Merge LoRA / consolidate ZeRO-3 (and AutoEP) shards into a folder that "
                    "AutoModelForImageTextToText.from_pretrained loads.")
    parser.add_argument("checkpoint", help="a checkpoint-N folder, output_dir/final, an output_dir "
                                           "(its final/, else its latest checkpoint), or an adapter")
    parser.add_argument("--out", required=True, help="the new model folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights' dtype (default: the training model's, model.dtype)")
    parser.add_argument("--base", default=None,
                        help="the base model, if not the one the run config or adapter names")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the export and comparing it with the training model")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        diff = export(args.checkpoint, args.out, dtype=args.dtype, base=args.base,
                      verify=not args.no_verify, overwrite=args.overwrite)
    except ExportMismatch as e:
        print(f"[export] {e}", file=sys.stderr)
        print("export_generation_equal=false")
        return 1
    except (FileNotFoundError, FileExistsError, ValueError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[export] wrote {args.out}")
    if diff is not None:
        print(f"export_logits_max_abs_diff={diff:.3g}")
        print("export_generation_equal=true")
    return 0


if __name__ == "__main__":
    sys.exit(main())
