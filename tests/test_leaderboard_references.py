"""Reference rows: Qwen's published Qwen3-VL scores (the shipped table, each number with its
source) on the leaderboard beside the runs, and each run's gap to them, in the Markdown, the
JSON and the HTML; never a checkpoint."""

from __future__ import annotations

import json
import re

import pytest

from eval import leaderboard, references
from tests.test_leaderboard import ROWS, row

NAMES = [f"qwen3vl-{size}-{mode}" for size in ("2b", "4b", "8b", "32b", "30b-a3b", "235b-a22b")
         for mode in ("thinking", "instruct")]


def entry(checkpoint: str, task: str, score: float, split: str | None = None,
          model: str = "Qwen/Qwen3-VL-8B-Instruct") -> dict:
    benchmark = {"mmmu_val": "MMMU", "mathvista_testmini": "MathVista", "docvqa_val": "DocVQA",
                 "screenspot_pro": "ScreenSpot-Pro", "screenspot": "ScreenSpot"}.get(task, "RefCOCO")
    default = {"mmmu_val": "validation", "mathvista_testmini": "testmini", "docvqa_val": "validation"}
    return {"model": model, "checkpoint": checkpoint, "benchmark": benchmark, "task": task,
            "split": split or default.get(task, task.rsplit("_", 1)[-1]), "metric": "accuracy",
            "n": 100, "score": score, "config_hash": None, "date": "2026-11-23T10:00:00Z"}


def cells(markdown: str, label: str) -> list[str]:
    """The cells of the Markdown table row labelled ``label`` (first match)."""
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")][1:]


def test_shipped_table_has_every_model_and_mode_with_sources():
    header, refs = references.load_table()
    assert list(refs) == NAMES == references.names()
    assert header["source"]["arxiv"] == "2511.21631v2" and header["source"]["date"] == "2025-11-27"
    pages = {"2b": (4, 18), "4b": (4, 18), "8b": (4, 18), "32b": (3, 16), "30b-a3b": (3, 16),
             "235b-a22b": (2, 15)}
    for name, ref in refs.items():
        assert sorted(s["benchmark"] for s in ref.scores) == sorted(
            ["MMMU", "MathVista", "DocVQA", "RefCOCO-avg", "ScreenSpot-Pro"]), name
        for s in ref.scores:
            table, page = pages[name.split("-", 1)[1].rsplit("-", 1)[0]]
            assert (s["source"]["table"], s["source"]["page"]) == (table, page), (name, s)
            assert s["source"]["url"] == f"https://arxiv.org/pdf/2511.21631v2#page={page}"
            assert 0 < s["score"] < 100
        assert ref.hub_id == f"Qwen/{ref.model}-{ref.mode}"
    # Spot checks against the report's Tables 2-4.
    assert refs["qwen3vl-8b-instruct"].score("MMMU")["score"] == 69.6
    assert refs["qwen3vl-2b-thinking"].score("MathVista")["score"] == 73.6
    assert refs["qwen3vl-30b-a3b-instruct"].score("DocVQA")["score"] == 95.0
    assert refs["qwen3vl-32b-instruct"].score("RefCOCO-avg")["score"] == 91.9
    assert refs["qwen3vl-235b-a22b-thinking"].score("ScreenSpot-Pro")["score"] == 61.8
    assert refs["qwen3vl-235b-a22b-instruct"].score("ScreenSpot-Pro")["score"] == 62.0
    assert refs["qwen3vl-8b-instruct"].score("DocVQA")["split"] == "test"
    assert {"ScreenSpot", "ScreenSpot-v2"} <= set(header["not_published"])  # left out, said so


def test_reference_row_and_gaps_in_markdown():
    rows = [entry("base", "mmmu_val", 0.62), entry("base", "mathvista_testmini", 0.70),
            entry("lora", "mmmu_val", 0.716)]
    text = leaderboard.markdown(rows, base="base", references=["qwen3vl-8b-instruct"])
    assert cells(text, "ref: Qwen3-VL-8B-Instruct (tech report)") == ["69.6", "77.2"]
    assert cells(text, "lora") == ["71.6 (+9.6)", ""]           # the reference is no base
    gap_head = next(line for line in text.splitlines() if line.startswith("| checkpoint | reference |"))
    assert gap_head == "| checkpoint | reference | mmmu_val | mathvista_testmini |"
    gap_rows = [line for line in text.splitlines() if "| ref: Qwen3-VL-8B-Instruct (tech report) | " in line
                and not line.startswith("| ref:")]
    assert gap_rows == [
        "| base | ref: Qwen3-VL-8B-Instruct (tech report) | -7.6 (62.0 vs 69.6) | -7.2 (70.0 vs 77.2) |",
        "| lora | ref: Qwen3-VL-8B-Instruct (tech report) | +2.0 (71.6 vs 69.6) |  |"]
    assert ('ref: Qwen3-VL-8B-Instruct (tech report): Qwen Team, "Qwen3-VL Technical Report", '
            'arXiv:2511.21631v2 (2025-11-27), Table 4 (p.18)') in text
    assert "†" not in text and "RefCOCO-avg" not in text  # no DocVQA or RefCOCO task on the board
    # Without references: no reference row, no gap table.
    plain = leaderboard.markdown(rows, base="base")
    assert "ref:" not in plain and "Gap vs reference" not in plain


def test_docvqa_split_mismatch_is_marked_not_hidden():
    text = leaderboard.markdown([entry("run", "docvqa_val", 0.90)], references=["qwen3vl-4b-instruct"])
    assert cells(text, "ref: Qwen3-VL-4B-Instruct (tech report)") == ["95.3†"]
    assert cells(text, "run") == ["90.0"]
    assert "| run | ref: Qwen3-VL-4B-Instruct (tech report) | -5.3† (90.0 vs 95.3) |" in text.splitlines()
    assert ("†: docvqa_val: the reference is DocVQA_test (test split, the only one the report "
            "publishes), this run's is the validation split") in text
    # A run whose entry says it scored the test split is compared plainly.
    test_split = leaderboard.markdown([entry("run", "docvqa_val", 0.90, split="test")],
                                      references=["qwen3vl-4b-instruct"])
    assert "†" not in test_split and "-5.3 (90.0 vs 95.3)" in test_split


def test_refcoco_average_only_with_all_splits():
    full = [entry("full", t, 0.80 + 0.01 * i) for i, t in enumerate(references.REFCOCO_SPLITS)]
    part = [entry("part", t, 0.99) for t in references.REFCOCO_SPLITS[:3]]
    view = references.compare(full + part, leaderboard.columns(full + part), ["full", "part"],
                              references.resolve(["qwen3vl-2b-instruct"], []))
    avg = [r for r in view["rows"] if r["task"] == "RefCOCO-avg"]
    assert len(avg) == 1 and avg[0]["score"] == pytest.approx(0.856) and avg[0]["match"] == "average"
    mean = 100 * sum(0.80 + 0.01 * i for i in range(8)) / 8         # 83.5
    assert avg[0]["gaps"] == {"full": pytest.approx(mean - 85.6), "part": None}
    gap = {g["checkpoint"]: g for g in view["gaps"]}
    assert gap["part"]["why"] == "part has 3 of the 8 RefCOCO split tasks" and gap["part"]["splits"] == [3, 8]
    text = leaderboard.markdown(full + part, references=["qwen3vl-2b-instruct"])
    head = next(line for line in text.splitlines() if line.startswith("| checkpoint | reference |"))
    assert head.endswith("| RefCOCO-avg |")
    assert cells(text, "full")[-1] == "87.0"  # the main table: its own refcocog_test score
    gaps = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in text.splitlines()
            if "| ref: Qwen3-VL-2B-Instruct (tech report) |" in line and not line.startswith("| ref:")}
    assert gaps == {"full": "-2.1 (83.5 vs 85.6)", "part": "n/a: 3/8 splits (ref 85.6)"}
    assert "only for a checkpoint scored on all of them; no gap: part has 3 of the 8" in text
    # The reference row shows no RefCOCO cell in the per-split columns (it is one average).
    assert set(cells(text, "ref: Qwen3-VL-2B-Instruct (tech report)")) == {""}


def test_unpublished_screenspot_is_said_and_screenspot_pro_compared():
    rows = [entry("run", "screenspot", 0.9), entry("run", "screenspot_pro", 0.5, split="test")]
    text = leaderboard.markdown(rows, references=["qwen3vl-8b-thinking"])
    assert cells(text, "ref: Qwen3-VL-8B-Thinking (tech report)") == ["", "46.6"]
    assert "+3.4 (50.0 vs 46.6)" in text
    assert "No reference for screenspot: the report tabulates ScreenSpot Pro only" in text


def test_unknown_reference_is_one_line_with_the_choices(tmp_path, capsys):
    _, js = leaderboard.write(ROWS, tmp_path / "board")
    assert leaderboard.main([str(js), "--reference", "qwen3vl-9b-instruct"]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("[leaderboard] unknown reference 'qwen3vl-9b-instruct'; choices: auto, ")
    assert all(name in out for name in NAMES)
    with pytest.raises(ValueError, match="unknown reference 'x'"):
        leaderboard.markdown(ROWS, references=["x"])


def test_auto_picks_the_runs_models():
    rows = [entry("a", "mmmu_val", 0.5, model="Qwen/Qwen3-VL-2B-Instruct"),
            entry("b", "mmmu_val", 0.6, model="Qwen/Qwen3-VL-4B-Thinking"),
            entry("c", "mmmu_val", 0.6, model="runs/local-model")]
    assert [r.name for r in references.resolve(["auto", "qwen3vl-2b-instruct"], rows)] == [
        "qwen3vl-2b-instruct", "qwen3vl-4b-thinking"]
    assert references.resolve(["QWEN3VL-8B-Instruct"], rows)[0].name == "qwen3vl-8b-instruct"


def test_reference_without_anything_to_show_warns(tmp_path, capsys):
    _, js = leaderboard.write([entry("a", "mmmu_val", 0.5, model="runs/local-model")], tmp_path / "board")
    assert leaderboard.main([str(js), "--reference", "auto"]) == 0
    assert "warning: --reference auto: no reference score" in capsys.readouterr().out


def test_json_carries_reference_rows_and_reads_back_without_them(tmp_path, capsys):
    _, js = leaderboard.write(ROWS, tmp_path / "board", base="base", references=["qwen3vl-2b-instruct"])
    board = json.loads(js.read_text())
    runs, refs = board[:len(ROWS)], board[len(ROWS):]
    assert all(tuple(e) == leaderboard.ENTRY_KEYS for e in runs)
    assert [(r["task"], r["score"], r["match"]) for r in refs] == [
        ("mmmu_val", 0.534, "same"), ("docvqa_val", 0.933, "split"), ("RefCOCO-avg", 0.856, "average")]
    mmmu = refs[0]
    assert mmmu["checkpoint"] == "ref: Qwen3-VL-2B-Instruct (tech report)"
    assert mmmu["reference"] == "qwen3vl-2b-instruct" and mmmu["model"] == "Qwen/Qwen3-VL-2B-Instruct"
    assert mmmu["source"] == {"title": "Qwen3-VL Technical Report", "arxiv": "2511.21631v2", "table": 4,
                              "page": 18, "url": "https://arxiv.org/pdf/2511.21631v2#page=18"}
    assert mmmu["gaps"] == {"base": pytest.approx(41.0 - 53.4), "lora": pytest.approx(45.2 - 53.4)}
    assert refs[2]["gaps"] == {"base": None, "lora": None}
    # Read back as a source: only the runs; references come back only when asked again.
    assert leaderboard.load([js]) == runs
    assert leaderboard.mixed_weights([js]) == []
    assert leaderboard.main([str(js), "--expect-ahead", "lora:base@mmmu_val,refcoco_testA"]) == 0
    assert "ref:" not in capsys.readouterr().out


def test_reference_is_never_a_checkpoint(tmp_path, capsys):
    ahead = [r for r in ROWS if r["task"] == "mmmu_val"]       # lora 45.2 > base 41.0; ref 53.4
    _, js = leaderboard.write(ahead, tmp_path / "board")
    args = [str(js), "--reference", "qwen3vl-2b-instruct"]
    assert leaderboard.main(args + ["--expect-ahead", "lora:base"]) == 0
    out = capsys.readouterr().out
    assert "| ref: Qwen3-VL-2B-Instruct (tech report) | 53.4 |" in out
    assert "ahead on every task: lora:base" in out
    label = "ref: Qwen3-VL-2B-Instruct (tech report)"
    assert leaderboard.main(args + ["--base", label]) == 2     # not a base
    assert "is not on the leaderboard" in capsys.readouterr().out
    assert leaderboard.main(args + ["--expect-ahead", f"lora:{label}"]) == 2  # nor compared
    assert "checkpoint 'ref: Qwen3-VL-2B-Instruct (tech report)' is not on the leaderboard " \
           "(reference rows are not checkpoints)" in capsys.readouterr().out


def test_html_shows_reference_rows_gaps_and_sources(tmp_path):
    rows = ROWS + [row("lora", "mmmu_val", 0.60, "2026-12-01T00:00:00Z")]
    html = leaderboard.write_html(rows, tmp_path / "board.html", base="base",
                                  references=["qwen3vl-2b-instruct"]).read_text()
    ref = re.search(r'<tr class="ref" data-reference="qwen3vl-2b-instruct">(.*?)</tr>', html).group(1)
    assert "ref: Qwen3-VL-2B-Instruct (tech report)" in ref and 'class="delta"' not in ref
    assert 'data-task="mmmu_val" data-score="0.534"' in ref
    assert re.search(r'data-task="docvqa_val" data-score="0.933" title="DocVQA_test \(test split\), '
                     r'Table 4 \(p.18\) of arXiv:2511.21631v2"><span class="value">93.3</span>'
                     r'<span class="mark">†</span>', ref)
    assert '<option value="ref:' not in html                   # never a base
    gaps = html[html.index('<table id="gaps">'):]
    assert "<td>lora</td><td>ref: Qwen3-VL-2B-Instruct (tech report)</td><td class=\"score\">" \
           "+6.6 (60.0 vs 53.4)</td>" in gaps
    assert "n/a: 1/8 splits (ref 85.6)" in gaps
    assert "Qwen Team, &quot;Qwen3-VL Technical Report&quot;, arXiv:2511.21631v2" in gaps
    assert html.count('class="refline"') == 2                 # mmmu_val and docvqa_val
    assert html.count("<script>") == 1
    plain = leaderboard.write_html(rows, tmp_path / "plain.html", base="base").read_text()
    assert 'class="ref"' not in plain and 'id="gaps"' not in plain
