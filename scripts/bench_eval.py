"""Batched vs one-at-a-time generation on the embedded default (tiny dense model, synthetic
eval split), through the eval harness itself. Prints name=value lines:

  batched_samples_per_s, sequential_samples_per_s, batched_speedup, predictions_identical

Run with no arguments; --batch-size and --per-task change the workload.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.configio import load_config  # noqa: E402
from data.processor import build_processor  # noqa: E402
from data.synthetic import generate  # noqa: E402
from eval.config import EvalConfig  # noqa: E402
from eval.runner import evaluate_task  # noqa: E402
from train.debug_models import build_tiny_checkpoint  # noqa: E402
from train.modeling import load_model, load_processor  # noqa: E402

TASKS = ("synthetic_vqa", "synthetic_grounding", "synthetic_doc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-task", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_eval-"))
    data = generate(work / "data", train_per_task=0, eval_per_task=args.per_task)["eval"]
    ckpt = build_tiny_checkpoint(work / "model", "dense", processor=build_processor())
    tasks = ", ".join(f"{{name: {t}, data: {data}}}" for t in TASKS)
    cfg = load_config(EvalConfig, None, [f"checkpoints=[{{name: base, path: {ckpt}}}]",
                                         f"tasks=[{tasks}]", "progress=false",
                                         f"generation.max_new_tokens={args.max_new_tokens}"])
    model = load_model(str(ckpt)).eval()
    processor = load_processor(str(ckpt))

    def run(batch_size: int, out: Path) -> tuple[float, dict]:
        cfg.generation.batch_size = batch_size
        seconds, predictions = 0.0, {}
        for spec in cfg.tasks:
            row = evaluate_task(model, processor, cfg, cfg.checkpoints[0], spec, out)
            seconds += row["seconds"]
            path = out / "predictions/base" / f"{spec.name}.jsonl"
            predictions.update({(spec.name, r["id"]): r["prediction"] for r in
                                map(json.loads, path.read_text().splitlines())})
        return len(predictions) / seconds, predictions

    run(args.batch_size, work / "warmup")  # first-call overheads out of the measurement
    batched, batched_preds = run(args.batch_size, work / "batched")
    sequential, sequential_preds = run(1, work / "sequential")
    print(f"samples={len(batched_preds)}")
    print(f"batch_size={args.batch_size}")
    print(f"batched_samples_per_s={batched:.2f}")
    print(f"sequential_samples_per_s={sequential:.2f}")
    print(f"batched_speedup={batched / sequential:.2f}")
    print(f"predictions_identical={int(batched_preds == sequential_preds)}")


if __name__ == "__main__":
    main()
