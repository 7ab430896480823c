"""``python -m data SUBCOMMAND``: data tools.

  synth   write the synthetic VQA / grounding / document corpus (LLaVA JSON + PNG images)
  check   read a training file (LLaVA JSON or messages JSONL), report bad samples
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write the synthetic corpus")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train-per-task", type=int, default=1000)
    synth.add_argument("--eval-per-task", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    check = sub.add_parser("check", help="validate a training data file")
    check.add_argument("path")
    check.add_argument("--format", default="llava_json", choices=["llava_json", "messages"])
    check.add_argument("--image-root", default=None)
    args = parser.parse_args(argv)

    if args.command == "synth":
        from data.synthetic import generate

        paths = generate(args.out, args.train_per_task, args.eval_per_task, args.seed)
        for split, path in paths.items():
            print(f"[data] {split}: {path}")
        return 0

    from data.samples import BadSampleLog, DataError
    from data.sources import load_source

    bad = BadSampleLog("skip")
    try:
        samples = load_source(args.format, args.path, args.image_root, bad)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    print(f"[data] {args.path}: {len(samples)} good samples, {len(bad.records)} bad")
    if bad.records:
        print(bad.report(len(samples)))
        for record in bad.records[3:]:
            print(f"  {record}")
    return 1 if bad.records else 0


if __name__ == "__main__":
    sys.exit(main())
