"""The eval entry point: batched generation, scores, predictions cache, leaderboard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data.configio import load_config
from eval import leaderboard
from eval.config import EvalConfig
from eval.runner import evaluate

ROOT = Path(__file__).resolve().parents[1]


def eval_config(tiny, data: Path, out: Path, adapter: str | None = None):
    checkpoints = [f"{{name: base, path: {tiny['dense']}}}"]
    if adapter:
        checkpoints.append(f"{{name: tuned, path: {tiny['dense']}, adapter: {adapter}}}")
    tasks = ", ".join(f"{{name: synthetic_{t}, data: {data}}}" for t in ("vqa", "grounding", "doc"))
    return load_config(EvalConfig, ROOT / "configs/demo/eval.yaml", [
        f"output_dir={out}", f"checkpoints=[{', '.join(checkpoints)}]", f"tasks=[{tasks}]",
        f"leaderboard={out}/leaderboard", "generation.batch_size=5", "generation.max_new_tokens=8"])


def test_eval_writes_predictions_results_and_leaderboard(tiny, corpus, tmp_path):
    out = tmp_path / "eval"
    rows = evaluate(eval_config(tiny, corpus["eval"], out))
    assert [(r["task"], r["metric"]) for r in rows] == [
        ("synthetic_vqa", "exact_match"), ("synthetic_grounding", "acc_iou50"),
        ("synthetic_doc", "anls")]
    assert all(r["n"] == 4 and r["generated"] == 4 and 0.0 <= r["score"] <= 1.0 for r in rows)
    preds = (out / "predictions/base/synthetic_vqa.jsonl").read_text().splitlines()
    assert len(preds) == 4 and all("prediction" in json.loads(p) for p in preds)
    board = json.loads((out / "leaderboard.json").read_text())
    assert {tuple(r) for r in board} == {leaderboard.ENTRY_KEYS}
    assert {r["checkpoint"] for r in board} == {"base"}
    assert {r["benchmark"] for r in board} == {"synthetic"}
    assert "| base |" in (out / "leaderboard.md").read_text()
    assert "<table" in (out / "leaderboard.html").read_text()
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun with the same settings generates nothing and scores the same.
    again = evaluate(eval_config(tiny, corpus["eval"], out))
    assert [r["generated"] for r in again] == [0, 0, 0]
    assert [r["score"] for r in again] == [r["score"] for r in rows]


def test_batched_generation_equals_one_at_a_time(tiny, corpus, tmp_path):
    cfg = eval_config(tiny, corpus["eval"], tmp_path / "b")
    batched = evaluate(cfg)
    cfg.output_dir, cfg.generation.batch_size = str(tmp_path / "s"), 1
    single = evaluate(cfg)
    for task in ("vqa", "grounding", "doc"):
        a = (tmp_path / f"b/predictions/base/synthetic_{task}.jsonl").read_text().splitlines()
        b = (tmp_path / f"s/predictions/base/synthetic_{task}.jsonl").read_text().splitlines()
        pa = {json.loads(x)["id"]: json.loads(x)["prediction"] for x in a}
        pb = {json.loads(x)["id"]: json.loads(x)["prediction"] for x in b}
        assert pa == pb
    assert [r["score"] for r in batched] == [r["score"] for r in single]


def test_unreadable_image_is_recorded_not_fatal(tiny, corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus["eval"].parent / "images", data / "images")
    records = json.loads(corpus["eval"].read_text())
    victim = next(r for r in records if r["task"] == "doc")
    (data / victim["image"]).write_bytes(b"not a png")
    (data / "eval.json").write_text(json.dumps(records))
    rows = evaluate(eval_config(tiny, data / "eval.json", tmp_path / "eval"))
    doc = next(r for r in rows if r["task"] == "synthetic_doc")
    assert doc["failed"] == 1 and doc["n"] == 4
    lines = [json.loads(x) for x in
             (tmp_path / "eval/predictions/base/synthetic_doc.jsonl").read_text().splitlines()]
    assert any(x["id"] == victim["id"] and "error" in x for x in lines)


def test_eval_cli_loads_base_plus_adapter(tiny, corpus, tmp_path):
    from tests.test_train import run_train

    run_train(tiny, corpus, tmp_path / "train", "train.max_steps=2")
    adapter = tmp_path / "train/final"
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(f"""
output_dir: {tmp_path}/eval
checkpoints:
  - {{name: base, path: {tiny['dense']}}}
  - {{name: tuned, path: {tiny['dense']}, adapter: {adapter}}}
tasks:
  - {{name: synthetic_doc, data: {corpus['eval']}}}
generation: {{batch_size: 4, max_new_tokens: 4}}
leaderboard: {tmp_path}/board
""")
    proc = subprocess.run([sys.executable, "-m", "eval", str(cfg_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    board = json.loads((tmp_path / "board.json").read_text())
    assert [r["checkpoint"] for r in board] == ["base", "tuned"]


def test_unknown_task_is_a_config_error(tmp_path):
    from data.configio import ConfigError

    with pytest.raises(ConfigError, match="unknown task 'mmmu_pro'"):
        load_config(EvalConfig, None, ["checkpoints=[{name: a, path: b}]",
                                       "tasks=[{name: mmmu_pro, data: x}]"])


@pytest.mark.parametrize("path", [ROOT / "configs/demo/eval.yaml", *sorted((ROOT / "configs/eval").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_shipped_eval_configs_load(path):
    cfg = load_config(EvalConfig, path)
    assert cfg.checkpoints and cfg.tasks
