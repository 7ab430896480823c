"""The README's main job, end to end (slow: about 10 minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


@pytest.mark.slow
def test_demo_fine_tune_beats_base_on_every_task(demo_out):
    tmp_path = demo_out
    proc = subprocess.run([sys.executable, "scripts/run_demo.py", "--out", str(tmp_path),
                           "train.progress=false"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    score = {(r["checkpoint"], r["task"]): r["score"] for r in board}
    tasks = {"synthetic_vqa", "synthetic_grounding", "synthetic_doc"}
    assert {t for _, t in score} == tasks
    for task in tasks:
        assert score[("lora-demo", task)] > score[("base", task)] + 0.2, (task, score)


@pytest.mark.slow
def test_demo_rl_grpo_row_beats_the_fine_tune_on_distractor_grounding(demo_out):
    """`make demo-rl` from the fine-tune above: GRPO's row must beat lora-demo where the
    fine-tune is weak (a second shape in the image) and keep the three demo tasks."""
    if not (demo_out / "train/final").is_dir():
        pytest.skip("needs the demo's fine-tune (test_demo_fine_tune_beats_base_on_every_task)")
    proc = subprocess.run([sys.executable, "scripts/run_demo.py", "--rl", "--out", str(demo_out),
                           "--grpo", "train.progress=false"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "reusing the fine-tune" in proc.stdout
    board = json.loads((demo_out / "leaderboard.json").read_text())
    score = {(r["checkpoint"], r["task"]): r["score"] for r in board if "checkpoint" in r}
    assert {c for c, _ in score} == {"base", "lora-demo", "lora-demo-grpo"}
    task = "synthetic_grounding_distractor"
    assert score[("lora-demo-grpo", task)] > score[("lora-demo", task)], score
    for t in ("synthetic_vqa", "synthetic_grounding", "synthetic_doc"):
        assert score[("lora-demo-grpo", t)] >= score[("lora-demo", t)] - 0.1, (t, score)
    rollouts = (demo_out / "grpo/rollouts.jsonl").read_text().splitlines()
    assert len(rollouts) == 200 * 8 * 8  # every completion of every step recorded
