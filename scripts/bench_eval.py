"""The eval harness on the embedded default (tiny dense model, synthetic eval split). Prints
name=value lines:

  batched_samples_per_s, sequential_samples_per_s, batched_speedup, predictions_identical:
      batched vs one-at-a-time generation in this process, same predictions or not;
  dp_equals_single: `torchrun --nproc_per_node 2 -m eval` gives the scores and predictions of
      `python -m eval` (1 or 0);
  resume_equals_uninterrupted: an eval SIGKILLed after its second batch
      (`tests/helpers/faults.py eval CONFIG --kill-after-batches 2`), then rerun with
      `python -m eval`, gives the uninterrupted scores and predictions (1 or 0), and
      regenerates only what was lost (resume_regenerated=).

and, cheap (numpy only, a few seconds; alone with --stats-only), the statistics of
eval/stats.py on simulated checkpoints of known accuracy:

  ci_coverage: the share of 95% bootstrap intervals (900 items) that cover the true accuracy,
      over 1000 trials at accuracies 0.25/0.5/0.75/0.9 (goal 0.93-0.97);
  paired_test_false_positive_rate: two checkpoints of equal true accuracy on the same 900
      items, McNemar mid-p < 0.05, over 2000 trials (goal <= 0.06);
  paired_test_power: the second checkpoint 5 points better (60% vs 65%), 900 items, over 1000
      trials (goal >= 0.8);
  paired_test_agreement: the share of items on which the two simulated checkpoints agree.
      Items differ in difficulty (each item's chance of being answered right, shared by both
      checkpoints, is Beta-distributed with mean 0.6 and concentration 1), so two checkpoints
      agree on about 3/4 of the items, as fine-tunes of one base do; power depends on it;
  paired_test_power_independent: the same 5 points when the two checkpoints' answers are
      independent (agreement about 1/2): the worst case, which no test on 900 items lifts to 0.8;
  presence_penalty_hf_equals_reference: the HF backend's presence penalty
      (eval/sampling.py) gives vLLM's logits on random cases (1 or 0).

Run with no arguments; --batch-size and --per-task change the workload; --stats-only prints the
cheap figures alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.configio import load_config  # noqa: E402
from data.processor import build_processor  # noqa: E402
from data.tools.synthetic import generate  # noqa: E402
from eval.checkpoints import resolve_checkpoint  # noqa: E402
from eval.config import EvalConfig  # noqa: E402
from eval.generate import HFGenerator  # noqa: E402
from eval.runner import evaluate_task  # noqa: E402
from tests.helpers.launch import entry  # noqa: E402
from train.debug_models import build_tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TASKS = ("synthetic_vqa", "synthetic_grounding", "synthetic_doc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-task", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--stats-only", action="store_true",
                        help="only the statistics figures (no model, a few seconds)")
    args = parser.parse_args()
    print_stats_figures()
    if args.stats_only:
        return

    work = Path(tempfile.mkdtemp(prefix="bench_eval-"))
    data = generate(work / "data", train_per_task=0, eval_per_task=args.per_task)["eval"]
    ckpt = build_tiny_checkpoint(work / "model", "dense", processor=build_processor())
    tasks = ", ".join(f"{{name: {t}, data: {data}}}" for t in TASKS)
    cfg = load_config(EvalConfig, None, [f"checkpoints=[{{name: base, path: {ckpt}}}]",
                                         f"tasks=[{tasks}]", "progress=false",
                                         f"generation.max_new_tokens={args.max_new_tokens}"])
    generator = HFGenerator(resolve_checkpoint(str(ckpt)), cfg, torch.device("cpu"))

    def run(batch_size: int, out: Path) -> tuple[float, dict]:
        cfg.generation.batch_size = batch_size
        seconds, predictions = 0.0, {}
        for spec in cfg.tasks:
            row = evaluate_task(generator, cfg, cfg.checkpoints[0], spec, out)
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

    # The CLI, as users launch it: one process, two under torchrun, and a killed-then-resumed run.
    def config(out: Path) -> Path:
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump({
            "output_dir": str(out), "progress": False,
            "checkpoints": [{"name": "base", "path": str(ckpt)}],
            "tasks": [{"name": t, "data": str(data)} for t in TASKS],
            "generation": {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}}))
        return path

    run_cli(config(work / "single"))
    run_cli(config(work / "dp"), nproc=2)
    killed = run_cli(config(work / "resumed"), kill_after_batches=2, check=False)
    if killed.returncode != -9:
        raise SystemExit(f"the run was meant to be SIGKILLed: rc {killed.returncode}\n{killed.stderr[-3000:]}")
    run_cli(config(work / "resumed"))
    single, dp, resumed = (outcome(work / name) for name in ("single", "dp", "resumed"))
    regenerated = sum(r["generated"] for r in
                      json.loads((work / "resumed/results/base.json").read_text()))
    print(f"dp_equals_single={int(dp == single)}")
    print(f"resume_equals_uninterrupted={int(resumed == single)}")
    print(f"resume_regenerated={regenerated}")


def print_stats_figures() -> None:
    from eval.stats_sim import figures

    for name, value in figures().items():
        print(f"{name}={value}", flush=True)
    print(f"presence_penalty_hf_equals_reference={int(presence_penalty_matches(200))}")


def presence_penalty_matches(cases: int) -> bool:
    """eval.sampling.PresencePenalty against vLLM's formula written out in plain Python, on
    random logits, prompt lengths, generated ids (repeats included) and penalties."""
    from eval.sampling import PresencePenalty, presence_penalty_reference

    rng = torch.Generator().manual_seed(0)
    for _ in range(cases):
        rows, vocab = int(torch.randint(1, 5, (1,), generator=rng)), int(torch.randint(2, 60, (1,), generator=rng))
        prompt_len, new = (int(x) for x in torch.randint(0, 12, (2,), generator=rng))
        penalty = float(torch.empty(1).uniform_(-2, 2, generator=rng))
        ids = torch.randint(0, vocab, (rows, prompt_len + new), generator=rng)
        logits = torch.randn(rows, vocab, generator=rng)
        got = PresencePenalty(penalty, prompt_len)(ids, logits.clone())
        want = torch.tensor(presence_penalty_reference(logits.tolist(), ids[:, prompt_len:].tolist(), penalty))
        if not torch.allclose(got, want, atol=1e-6, rtol=0):
            return False
    return True


def run_cli(config: Path, nproc: int = 1, kill_after_batches: int | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """``python -m eval CONFIG``, under torchrun (on a free port) when nproc > 1; with
    ``kill_after_batches``, tests/helpers/faults.py instead, which SIGKILLs the process after
    that many batches. The command is the tests' (tests/helpers/launch.py); the environment is
    this process's."""
    faults = () if kill_after_batches is None else ("--kill-after-batches", str(kill_after_batches))
    cmd = entry("eval", nproc, faults=faults) + [str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc


def outcome(out: Path) -> tuple[list, dict]:
    """Scores per task and every sample's prediction."""
    rows = json.loads((out / "results/base.json").read_text())
    predictions = {}
    for task in TASKS:
        for line in (out / f"predictions/base/{task}.jsonl").read_text().splitlines():
            record = json.loads(line)
            predictions[(task, record["id"])] = record["prediction"]
    return [(r["task"], r["score"], r["n"], r.get("breakdown")) for r in rows], predictions


if __name__ == "__main__":
    main()
