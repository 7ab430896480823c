"""The main job on the embedded default, end to end on CPU (what `make demo` runs).

synthetic corpus -> tiny Qwen3-VL checkpoints -> LoRA fine-tune -> eval of base and fine-tuned
-> leaderboard at OUT/leaderboard.{md,json,html,png}; exits 1 unless the fine-tune beats the base on
every task. Each step is the public entry point a user would run; extra key=value arguments go
to the training config (e.g. train.max_steps=200 for a quicker look).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"== {title}: {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("train_overrides", nargs="*")
    args = parser.parse_args()
    out, py = Path(args.out), sys.executable
    data, models, train = out / "data", out / "models", out / "train"
    dense = models / "qwen3vl-dense"

    step("corpus", [py, "-m", "data", "synth", "--out", str(data)])
    step("tiny models", [py, "scripts/make_tiny_models.py", "--out", str(models)])
    step("fine-tune", [py, "-m", "train", "configs/demo/train_lora.yaml",
                       f"model.path={dense}", f"data.train={data / 'train.json'}",
                       # The demo is meant to be run again: its previous run is replaced.
                       f"train.output_dir={train}", "train.overwrite=true",
                       *args.train_overrides])
    tasks = ", ".join(f"{{name: synthetic_{t}, data: {data / 'eval.json'}}}"
                      for t in ("vqa", "grounding", "doc"))
    step("eval", [py, "-m", "eval", "configs/demo/eval.yaml", f"output_dir={out / 'eval'}",
                  f"checkpoints=[{{name: base, path: {dense}}}, "
                  f"{{name: lora-demo, path: {dense}, adapter: {train / 'final'}}}]",
                  f"tasks=[{tasks}]", f"leaderboard={out / 'leaderboard'}"])
    check = subprocess.run([py, "-m", "eval.leaderboard", str(out / "leaderboard.json"),
                            "--expect-ahead", "lora-demo:base"], cwd=ROOT)
    return check.returncode


if __name__ == "__main__":
    sys.exit(main())
