"""The main job on the embedded default, end to end on CPU (what `make demo` runs).

synthetic corpus -> tiny Qwen3-VL checkpoints -> the corpus encoded once (``python -m data
prepare``) -> LoRA fine-tune -> eval of base and fine-tuned
-> leaderboard at OUT/leaderboard.{md,json,html,png}; exits 1 unless the fine-tune beats the base on
every task. Each step is the public entry point a user would run; extra key=value arguments go
to the training config (e.g. train.max_steps=200 for a quicker look).

``--rl`` (`make demo-rl`) goes on from the fine-tune (run first unless OUT/train/final exists):
the SFT model merged by ``python -m train.export`` -> grounding prompts with a distractor shape
-> GRPO (configs/demo/grpo.yaml, ``--grpo key=value`` overrides) -> a third leaderboard row,
``lora-demo-grpo``, which must beat ``lora-demo`` on ``synthetic_grounding_distractor``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("vqa", "grounding", "doc")


def step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"== {title}: {time.perf_counter() - t0:.0f} s", flush=True)


def evaluate(py: str, out: Path, checkpoints: list[tuple[str, Path, Path | None]],
             tasks: list[tuple[str, Path]]) -> None:
    """One eval into OUT/eval (earlier predictions of the same checkpoint are reused)."""
    cks = ", ".join(f"{{name: {name}, path: {path}" + (f", adapter: {adapter}}}" if adapter else "}")
                    for name, path, adapter in checkpoints)
    tks = ", ".join(f"{{name: {name}, data: {data}}}" for name, data in tasks)
    step("eval", [py, "-m", "eval", "configs/demo/eval.yaml", f"output_dir={out / 'eval'}",
                  f"checkpoints=[{cks}]", f"tasks=[{tks}]", f"leaderboard={out / 'leaderboard'}"])


def expect_ahead(py: str, out: Path, *pairs: str) -> int:
    args = [a for pair in pairs for a in ("--expect-ahead", pair)]
    return subprocess.run([py, "-m", "eval.leaderboard", str(out / "leaderboard.json"), *args],
                          cwd=ROOT).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--rl", action="store_true",
                        help="go on with GRPO from the fine-tune (the SFT part is reused when "
                             "OUT/train/final exists)")
    parser.add_argument("--grpo", action="append", default=[], metavar="KEY=VALUE",
                        help="override of configs/demo/grpo.yaml (repeatable)")
    parser.add_argument("train_overrides", nargs="*")
    args = parser.parse_args()
    out, py = Path(args.out), sys.executable
    data, models, train = out / "data", out / "models", out / "train"
    dense = models / "qwen3vl-dense"
    sft = [("base", dense, None), ("lora-demo", dense, train / "final")]
    sft_tasks = [(f"synthetic_{t}", data / "eval.json") for t in TASKS]

    if not (args.rl and (train / "final").is_dir()):
        step("corpus", [py, "-m", "data", "synth", "--out", str(data)])
        step("tiny models", [py, "scripts/make_tiny_models.py", "--out", str(models)])
        config = ["configs/demo/train_lora.yaml", f"model.path={dense}",
                  f"data.train={data / 'train.json'}"]
        # The run sees each sample 16 times: encoded once here, read back at every epoch.
        step("prepare", [py, "-m", "data", "prepare", "--out", str(data / "prepared"),
                         "--no-progress", *config, *args.train_overrides])
        step("fine-tune", [py, "-m", "train", *config, f"data.prepared={data / 'prepared'}",
                           # The demo is meant to be run again: its previous run is replaced.
                           f"train.output_dir={train}", "train.overwrite=true",
                           *args.train_overrides])
        evaluate(py, out, sft, sft_tasks)
        status = expect_ahead(py, out, "lora-demo:base")
        if status or not args.rl:
            return status
    else:
        print(f"== reusing the fine-tune in {train / 'final'} (delete {out} to redo it)")

    merged, data_rl = models / "qwen3vl-dense-sft", out / "data_rl"
    step("merge the fine-tune", [py, "-m", "train.export", str(train / "final"),
                                 "--out", str(merged), "--overwrite"])
    step("RL prompts", [py, "-m", "data", "synth", "--out", str(data_rl), "--seed", "7",
                        "--tasks", "grounding,grounding_distractor",
                        "--train-per-task", "400", "--eval-per-task", "100"])
    step("GRPO", [py, "-m", "train", "configs/demo/grpo.yaml", f"model.path={merged}",
                  f"data.train={data_rl / 'train.json'}", f"train.output_dir={out / 'grpo'}",
                  "train.overwrite=true", *args.grpo])
    evaluate(py, out, [*sft, ("lora-demo-grpo", merged, out / "grpo" / "final")],
             [*sft_tasks, ("synthetic_grounding_distractor", data_rl / "eval.json")])
    return expect_ahead(py, out, "lora-demo:base",
                        "lora-demo-grpo:lora-demo@synthetic_grounding_distractor")


if __name__ == "__main__":
    sys.exit(main())
