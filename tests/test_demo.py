"""The README's main job, end to end (slow: about 10 minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_fine_tune_beats_base_on_every_task(tmp_path):
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
