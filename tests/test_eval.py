"""The eval entry point: batched generation, scores, predictions cache, leaderboard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data.configio import load_config
from eval import leaderboard
from eval.config import EvalConfig
from eval.runner import evaluate
from tests.helpers.launch import run_eval, run_train

ROOT = Path(__file__).resolve().parents[1]


def eval_config(tiny, data: Path, out: Path, adapter: str | None = None):
    checkpoints = [f"{{name: base, path: {tiny['dense']}}}"]
    if adapter:
        checkpoints.append(f"{{name: tuned, path: {tiny['dense']}, adapter: {adapter}}}")
    tasks = ", ".join(f"{{name: synthetic_{t}, data: {data}}}" for t in ("vqa", "grounding", "doc"))
    return load_config(EvalConfig, ROOT / "configs/demo/eval.yaml", [
        f"output_dir={out}", f"checkpoints=[{', '.join(checkpoints)}]", f"tasks=[{tasks}]",
        f"leaderboard={out}/leaderboard", "generation.batch_size=5", "generation.max_new_tokens=8"])


def count_scoring(monkeypatch) -> list[tuple[str, str]]:
    """(task, sample id) of every call of the synthetic tasks' ``score``, in order."""
    from eval.tasks.synthetic import SyntheticTask

    calls, score = [], SyntheticTask.score

    def counted(self, prediction, sample):
        calls.append((self.name, sample.id))
        return score(self, prediction, sample)

    monkeypatch.setattr(SyntheticTask, "score", counted)
    return calls


def test_eval_writes_predictions_results_and_leaderboard(tiny, corpus, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    scored = count_scoring(monkeypatch)
    rows = evaluate(eval_config(tiny, corpus["eval"], out))
    assert len(scored) == len(set(scored)) == 12  # each prediction scored once, when written
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

    # A rerun with the same settings generates nothing, scores nothing again and gives the
    # same scores: the stored ones.
    scored.clear()
    again = evaluate(eval_config(tiny, corpus["eval"], out))
    assert [(r["generated"], r["rescored"]) for r in again] == [(0, 0)] * 3
    assert [r["score"] for r in again] == [r["score"] for r in rows] and scored == []


def test_records_from_older_versions_are_scored_at_summary(tiny, corpus, tmp_path, monkeypatch):
    """Records without a scoring fingerprint (or without a score) are scored when the run is
    summarised, once: the rescored records are appended and supersede the old ones."""
    out = tmp_path / "eval"
    rows = evaluate(eval_config(tiny, corpus["eval"], out))
    path = out / "predictions/base/synthetic_doc.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines()]
    for i, record in enumerate(old):
        del record["scorer"]
        if i % 2:
            del record["score"], record["parsed"]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))

    scored = count_scoring(monkeypatch)
    again = evaluate(eval_config(tiny, corpus["eval"], out))
    assert [(r["generated"], r["rescored"]) for r in again] == [(0, 0), (0, 0), (0, 4)]
    assert sorted(scored) == sorted(("synthetic_doc", r["id"]) for r in old)
    assert [r["score"] for r in again] == [r["score"] for r in rows]
    latest = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert all(r["scorer"] is None and "score" in r and "parsed" in r for r in latest.values())

    scored.clear()
    assert [r["rescored"] for r in evaluate(eval_config(tiny, corpus["eval"], out))] == [0, 0, 0]
    assert scored == []


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
    run_train(tiny["dense"], tmp_path / "train", "train.max_steps=2", "train.batch_size=4",
              data=corpus["train"])
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
    run_eval(cfg_path, timeout=300)
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
