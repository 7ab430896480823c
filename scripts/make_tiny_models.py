"""Write the offline stand-ins for Qwen3-VL checkpoints: a processor and two tiny random models.

  OUT/qwen3vl-dense   Qwen3VLForConditionalGeneration (+ processor files)
  OUT/qwen3vl-moe     Qwen3VLMoeForConditionalGeneration (+ processor files)

Both load with ``from_pretrained(path)`` exactly like ``Qwen/Qwen3-VL-8B-Instruct`` or
``Qwen/Qwen3-VL-30B-A3B-Instruct``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.processor import build_processor  # noqa: E402
from train.debug_models import build_tiny_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo/models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="qwen3_vl_instruct",
                        choices=["qwen3_vl_instruct", "qwen3_vl_thinking"],
                        help="chat template: the Instruct or the Thinking variant of Qwen3-VL")
    args = parser.parse_args()
    processor = build_processor(args.template)
    for kind in ("dense", "moe"):
        path = build_tiny_checkpoint(Path(args.out) / f"qwen3vl-{kind}", kind, args.seed, processor)
        print(f"[models] {kind}: {path}")


if __name__ == "__main__":
    main()
