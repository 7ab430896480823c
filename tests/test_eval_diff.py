"""python -m eval.diff: the flipped items of two runs side by side (Markdown and HTML with the
images), each item's newest record, the paired test, and bad input named."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from eval import diff
from eval.stats import mcnemar_midp


def record(i: int, prediction: str, score: float, image: str, **extra) -> dict:
    return {"id": f"q{i}", "prediction": prediction, "answer": "B", "score": score, "parsed": True,
            "scorer": None, "key": "k", "prompt": f"Question {i} <image>?", "images": [image], **extra}


def write(folder, task: str, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def runs(tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 32), (255, 0, 0)).save(image)
    a_scores = [1, 1, 0, 0, 1, 0]
    b_scores = [1, 0, 1, 1, 1, 0]          # q1 worse, q2 and q3 better
    a = tmp_path / "out/predictions/base"
    b = tmp_path / "out/predictions/lora"
    write(a, "mmmu_val", [record(i, f"A says {'B' if s else 'C'}", s, str(image)) for i, s in enumerate(a_scores)])
    write(b, "mmmu_val", [record(i, f"B says {'B' if s else 'C'} <b>", s, str(image)) for i, s in enumerate(b_scores)]
          # a rescored record of q0 supersedes the first: q0 now flips too (1 -> 0)
          + [record(0, "B says C", 0.0, str(image))])
    write(a, "docvqa_val", [record(0, "x", 0.5, str(image))])     # only in A: not compared
    return a, b, a_scores, [0, 0, 1, 1, 1, 0]


def test_flips_side_by_side_with_the_paired_test(runs, tmp_path, capsys):
    a, b, a_scores, b_scores = runs
    result = diff.diff_runs(a, b)
    assert list(result) == ["mmmu_val"]
    c = result["mmmu_val"]
    assert [f["id"] for f in c["flips"]] == ["q0", "q1", "q2", "q3"]  # worse first
    assert (c["n"], c["worse"], c["better"]) == (6, 2, 2)
    assert c["p"] == pytest.approx(mcnemar_midp(a_scores, b_scores))
    assert diff.main([str(a), str(b), "--out", str(tmp_path / "d"), "--html"]) == 0
    md = (tmp_path / "d.md").read_text()
    assert md.strip() in capsys.readouterr().out
    assert "6 items in common: 50.0 vs 50.0 (+0.0 points), 2 worse and 2 better in lora" in md
    assert "| q1 | Question 1 &lt;image&gt;? | B | A says B | 1.00 | B says C &lt;b&gt; | 0.00 |" in md
    assert "q4" not in md and "q5" not in md                       # unchanged items are not listed
    html = (tmp_path / "d.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 4 and "<b>" not in html
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []      # self-contained


def test_a_task_file_as_run_and_bad_input(runs, tmp_path, capsys):
    a, b, _, _ = runs
    assert diff.main([str(a / "mmmu_val.jsonl"), str(b / "mmmu_val.jsonl")]) == 0
    assert "# base/mmmu_val vs lora/mmmu_val" in capsys.readouterr().out
    assert diff.main([str(a), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such predictions folder" in capsys.readouterr().out
    assert diff.main([str(a), str(b), "--task", "docvqa_val"]) == 2
    assert "task 'docvqa_val' is not in both runs; tasks in both: ['mmmu_val']" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert diff.main([str(a), str(tmp_path / "empty")]) == 2
    assert "no <task>.jsonl predictions files" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        diff.main([str(a), str(b), "--html"])                      # needs --out
