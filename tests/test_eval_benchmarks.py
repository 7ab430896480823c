"""Benchmark fixtures (published column layouts, tests/helpers/benchmark_data.py) through the
harness end to end with the tiny model: results rows with per-subject / per-task breakdowns,
and the leaderboard. (DocVQA's is in test_docvqa.)"""

from __future__ import annotations

import json

import pytest

from data.configio import load_config
from eval.config import EvalConfig
from tests.helpers.benchmark_data import (MATHVISTA_ROWS, mathvista_folder, mmmu_folder,
                                          refcoco_folder, screenspot_file)


def test_mmmu_and_mathvista_end_to_end(tmp_path, tiny):
    from eval.runner import evaluate

    mmmu = mmmu_folder(tmp_path / "MMMU")
    mathvista = mathvista_folder(tmp_path)
    cfg = load_config(EvalConfig, None, [
        f"checkpoints=[{{name: base, path: {tiny['dense']}}}]", f"output_dir={tmp_path / 'out'}",
        f"tasks=[{{name: mmmu_val, data: {mmmu}}}, {{name: mathvista_testmini, data: {mathvista}}}]",
        "progress=false", "generation.max_new_tokens=4", "leaderboard=" + str(tmp_path / "out/board")])
    rows = {r["task"]: r for r in evaluate(cfg)}
    assert rows["mmmu_val"]["n"] == 2 and rows["mmmu_val"]["metric"] == "accuracy"
    assert {"subject/Art", "subject/Art_Theory"} <= set(rows["mmmu_val"]["breakdown"])
    assert rows["mathvista_testmini"]["n"] == len(MATHVISTA_ROWS)
    assert rows["mathvista_testmini"]["metric"] == "accuracy"
    assert any(k.startswith("task/") for k in rows["mathvista_testmini"]["breakdown"])
    # Whatever the random tiny model says: an unparsed answer scores 0 (no random-letter guess).
    for task in ("mmmu_val", "mathvista_testmini"):
        records = [json.loads(line) for line in
                   (tmp_path / f"out/predictions/base/{task}.jsonl").read_text().splitlines()]
        assert len(records) == rows[task]["n"]
        assert all(r["score"] == 0 for r in records if not r["parsed"])
        assert sum(not r["parsed"] for r in records) == rows[task]["unparsed"]
        # Parse rate beside the score; interval and per-item scores for paired tests; prompts
        # and images recorded for eval.diff.
        row = rows[task]
        assert row["parse_rate"] == pytest.approx(1 - row["unparsed"] / row["n"], abs=1e-4)
        assert row["item_scores"] == [r["score"] for r in records] and len(row["items"]) == 16
        assert row["ci"][0] <= row["score"] <= row["ci"][1]
        assert all(r["prompt"] and r["images"] for r in records)
    board = json.loads((tmp_path / "out/board.json").read_text())
    assert {r["task"] for r in board} == {"mmmu_val", "mathvista_testmini"}
    assert all(e["item_scores"] is not None and e["ci"] is not None for e in board)


def test_grounding_end_to_end(tmp_path, tiny):
    from eval.runner import evaluate

    refcoco = refcoco_folder(tmp_path)
    screens = tmp_path / "screens"
    screens.mkdir()
    screenspot = screenspot_file(screens)
    cfg = load_config(EvalConfig, None, [
        f"checkpoints=[{{name: base, path: {tiny['moe']}}}]", f"output_dir={tmp_path / 'out'}",
        f"tasks=[{{name: refcoco_testA, data: {refcoco}}}, {{name: screenspot_v2, data: {screenspot}}}]",
        "progress=false", "generation.max_new_tokens=8", "leaderboard=" + str(tmp_path / "out/board")])
    rows = {r["task"]: r for r in evaluate(cfg)}
    assert (rows["refcoco_testA"]["n"], rows["refcoco_testA"]["metric"]) == (2, "acc_iou50")
    assert (rows["refcoco_testA"]["benchmark"], rows["refcoco_testA"]["split"]) == ("RefCOCO", "testA")
    assert (rows["screenspot_v2"]["n"], rows["screenspot_v2"]["benchmark"]) == (1, "ScreenSpot-v2")
    assert all(r["arch"] == "moe" and r["checkpoint_kind"] == "base" for r in rows.values())
    board = json.loads((tmp_path / "out/board.json").read_text())
    assert {r["task"] for r in board} == {"refcoco_testA", "screenspot_v2"}
