"""The leaderboard from hand-made result rows: one JSON schema, newest result wins, deltas in
the Markdown, escaping in the HTML, the PNG, pre-schema results, bad input, the CLI, wandb."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from eval import leaderboard
from eval.leaderboard import ENTRY_KEYS
from tests.helpers import launch


def row(checkpoint: str, task: str, score: float, date: str | None = "2026-11-23T10:00:00Z", **extra) -> dict:
    """A results row as eval/runner.py writes it."""
    benchmark, split, metric = {"mmmu_val": ("MMMU", "validation", "accuracy"),
                                "docvqa_val": ("DocVQA", "validation", "anls"),
                                "refcoco_testA": ("RefCOCO", "testA", "acc_iou50")}[task]
    return {"model": "Qwen/Qwen3-VL-2B-Instruct", "checkpoint": checkpoint,
            "adapter": None if checkpoint == "base" else f"runs/{checkpoint}/final",
            "checkpoint_kind": "base" if checkpoint == "base" else "lora", "arch": "dense",
            "benchmark": benchmark, "task": task, "split": split, "metric": metric, "score": score,
            "n": 100, "unparsed": 1, "failed": 0, "generated": 100, "seconds": 12.5,
            "config_hash": "0123456789abcdef", "date": date,
            "breakdown": {"subject/Art": {"score": score, "n": 10}}, **extra}


ROWS = [row("base", "mmmu_val", 0.41), row("base", "docvqa_val", 0.80), row("base", "refcoco_testA", 0.70),
        row("lora", "mmmu_val", 0.452), row("lora", "docvqa_val", 0.75), row("lora", "refcoco_testA", 0.90)]


def write_results(folder: Path, rows: list[dict]) -> Path:
    """An eval output folder: results/<checkpoint>.json, one JSON list per checkpoint."""
    (folder / "results").mkdir(parents=True)
    for ck in dict.fromkeys(r["checkpoint"] for r in rows):
        (folder / "results" / f"{ck}.json").write_text(json.dumps([r for r in rows if r["checkpoint"] == ck]))
    return folder


def test_json_has_exactly_the_schema_keys(tmp_path):
    md, js = leaderboard.write(leaderboard.collect(write_results(tmp_path / "eval", ROWS) / "results"),
                               tmp_path / "board")
    assert (md, js) == (tmp_path / "board.md", tmp_path / "board.json")
    board = json.loads(js.read_text())
    assert [tuple(e) for e in board] == [ENTRY_KEYS] * len(ROWS)
    assert ENTRY_KEYS == ("model", "checkpoint", "benchmark", "task", "split", "metric", "n", "score",
                          "config_hash", "date", "unparsed", "ci", "items", "item_scores")
    assert board[0] == {"model": "Qwen/Qwen3-VL-2B-Instruct", "checkpoint": "base", "benchmark": "MMMU",
                        "task": "mmmu_val", "split": "validation", "metric": "accuracy", "n": 100,
                        "score": 0.41, "config_hash": "0123456789abcdef", "date": "2026-11-23T10:00:00Z",
                        "unparsed": 1, "ci": None, "items": None, "item_scores": None}
    # A leaderboard file reads back to the same entries (it is a valid source itself).
    assert leaderboard.load([js]) == board


def test_newest_date_wins_across_runs(tmp_path):
    old = write_results(tmp_path / "old", [row("base", "mmmu_val", 0.30, "2026-11-01T00:00:00Z"),
                                           row("base", "docvqa_val", 0.50, None)])
    new = write_results(tmp_path / "new", [row("base", "mmmu_val", 0.40, "2026-11-20T00:00:00Z"),
                                           row("base", "docvqa_val", 0.60, "2026-01-01T00:00:00Z")])
    for sources in ([old, new], [new, old]):
        score = leaderboard.score_table(leaderboard.load(sources))
        assert score == {("base", "mmmu_val"): 0.40, ("base", "docvqa_val"): 0.60}, sources
    # Same date: the source read last wins; timezones are compared as times, not as text.
    same = write_results(tmp_path / "same", [row("base", "mmmu_val", 0.45, "2026-11-20T01:00:00+01:00")])
    assert leaderboard.score_table(leaderboard.load([new, same]))[("base", "mmmu_val")] == 0.45
    assert leaderboard.score_table(leaderboard.load([same, new]))[("base", "mmmu_val")] == 0.40
    # Rows handed straight to write() are merged the same way.
    _, js = leaderboard.write([row("base", "mmmu_val", 0.9, "2026-12-01T00:00:00Z"),
                               row("base", "mmmu_val", 0.1, "2026-11-01T00:00:00Z")], tmp_path / "board")
    assert [e["score"] for e in json.loads(js.read_text())] == [0.9]


def test_markdown_shows_deltas_vs_base():
    text = leaderboard.markdown(ROWS, base="base")
    lines = text.splitlines()
    assert lines[0] == "| checkpoint | mmmu_val (accuracy) | docvqa_val (anls) | refcoco_testA (acc_iou50) |"
    assert "| base | 41.0 | 80.0 | 70.0 |" in lines
    assert "| lora | 45.2 (+4.2) | 75.0 (-5.0) | 90.0 (+20.0) |" in lines
    assert "deltas in points vs base" in text
    assert "| lora | 45.2 | 75.0 | 90.0 |" in leaderboard.markdown(ROWS).splitlines()
    with pytest.raises(ValueError, match="'nope' is not on the leaderboard"):
        leaderboard.markdown(ROWS, base="nope")


def test_html_escapes_names_and_fetches_nothing(tmp_path):
    evil = '<script>alert("x")</script> & \'q\''
    rows = ROWS + [dict(row("base", "mmmu_val", 0.5), checkpoint=evil, benchmark="<b>Bench</b>",
                        task='t"<i>', metric="a<b")]
    html = leaderboard.write_html(rows, tmp_path / "board.html", base="base").read_text()
    assert evil not in html and "<b>Bench</b>" not in html and "a<b" not in html and 't"<i>' not in html
    assert 'data-task="t&quot;&lt;i&gt;"' in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html
    assert "&lt;b&gt;Bench&lt;/b&gt;" in html
    assert html.count("<script>") == 1  # the page's own script only
    # Self-contained: no external scripts, styles, images or fonts.
    assert re.findall(r'(?:src|href)="(?!data:)', html) == [] and "@import" not in html
    assert '<option value="base" selected>' in html


def test_png_is_a_valid_image(tmp_path):
    from PIL import Image

    png = leaderboard.write_png(ROWS + [row("$x$ <odd>", "mmmu_val", 0.2)], tmp_path / "sub/board.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with Image.open(png) as image:
        image.verify()
        assert image.size[0] > 500 and image.size[1] > 300


def test_pre_schema_results_are_tolerated(tmp_path):
    """Results written before rows carried benchmark/split/config_hash/date."""
    old = [{"checkpoint": "base", "task": "mmmu_val", "metric": "accuracy", "score": 0.3, "n": 8,
            "model": "m", "adapter": None, "key": "feedfacefeedface",
            "breakdown": {"subject/Art": {"score": 0.5, "n": 2}}},
           {"checkpoint": "base", "task": "my_private_task", "metric": "accuracy", "score": 0.1, "n": 2,
            "model": "m", "adapter": None, "key": "0000000000000000"}]
    (tmp_path / "results").mkdir()
    (tmp_path / "results/base.json").write_text(json.dumps(old))
    entries = leaderboard.load([tmp_path])
    assert entries[0] == {"model": "m", "checkpoint": "base", "benchmark": "MMMU", "task": "mmmu_val",
                          "split": None, "metric": "accuracy", "n": 8, "score": 0.3,
                          "config_hash": "feedfacefeedface", "date": None, "unparsed": None,
                          "ci": None, "items": None, "item_scores": None}
    assert entries[1]["benchmark"] == "my_private_task"  # not registered: the task name
    # An old result loses to a dated new one for the same checkpoint and task.
    new = write_results(tmp_path / "new", [row("base", "mmmu_val", 0.6)])
    assert leaderboard.score_table(leaderboard.load([new, tmp_path]))[("base", "mmmu_val")] == 0.6


@pytest.mark.parametrize("content, message", [
    ('{"checkpoint": "base"}', "expected a JSON list of result rows, got dict"),
    ("[1, 2", "not valid JSON"),
    ('[{"checkpoint": "base", "task": "t", "metric": "m", "n": 1}]', "row 0: missing score"),
    ('[{"checkpoint": "b", "task": "t", "metric": "m", "n": 1, "score": "high"}]', "row 0: score must be a number"),
    ('[{"checkpoint": "b", "task": "t", "metric": "m", "n": 1, "score": 1, "date": "yesterday"}]',
     "row 0: date is not ISO-8601"),
    ('[{"checkpoint": "b", "task": "t", "metric": "m", "n": 2, "score": 1, "items": "ab",'
     ' "item_scores": [1]}]', "row 0: item_scores must be a list of n=2 numbers"),
    ('[{"checkpoint": "b", "task": "t", "metric": "m", "n": 1, "score": 1, "item_scores": [1]}]',
     "row 0: item_scores without the items hash"),
    ('[{"checkpoint": "b", "task": "t", "metric": "m", "n": 1, "score": 1, "ci": [0.1]}]',
     "row 0: ci must be [low, high]"),
])
def test_bad_results_file_is_named(tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        leaderboard.load([path])
    assert str(path) in str(error.value)


def test_missing_and_empty_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        leaderboard.load([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no results files"):
        leaderboard.load([tmp_path / "empty"])
    assert leaderboard.collect(tmp_path / "empty") == []


def test_cli_expect_ahead_exit_code(tmp_path, capsys):
    _, js = leaderboard.write(ROWS, tmp_path / "board")
    assert leaderboard.main([str(js), "--expect-ahead", "lora:base"]) == 1  # behind on docvqa_val
    assert "lora is not ahead of base on docvqa_val: 0.75 vs 0.8" in capsys.readouterr().out
    assert leaderboard.main([str(js), "--expect-ahead", "base:lora"]) == 1
    ahead = [r for r in ROWS if r["task"] != "docvqa_val"]
    _, js = leaderboard.write(ahead, tmp_path / "ahead")
    assert leaderboard.main([str(js), "--expect-ahead", "lora:base"]) == 0
    assert "ahead on every task: lora:base" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        leaderboard.main([str(js), "--expect-ahead", "lora"])
    # As scripts/run_demo.py calls it.
    proc = launch.run(launch.entry("eval.leaderboard") + [str(js), "--expect-ahead", "lora:base"])
    assert "| lora | 45.2 | 90.0 |" in proc.stdout


def test_cli_expect_ahead_on_some_tasks(tmp_path, capsys):
    """``A:B@t1,t2``: A must be ahead on those tasks only; a task not on the board is an error."""
    _, js = leaderboard.write(ROWS, tmp_path / "board")       # lora behind base on docvqa_val only
    assert leaderboard.main([str(js), "--expect-ahead", "lora:base@mmmu_val,refcoco_testA"]) == 0
    assert "ahead on every task asked: lora:base@mmmu_val,refcoco_testA" in capsys.readouterr().out
    assert leaderboard.main([str(js), "--expect-ahead", "lora:base@mmmu_val,docvqa_val"]) == 1
    out = capsys.readouterr().out
    assert "lora is not ahead of base on docvqa_val" in out and "on mmmu_val" not in out
    assert leaderboard.main([str(js), "--expect-ahead", "base:lora@docvqa_val",
                             "--expect-ahead", "lora:base"]) == 1  # plain A:B is still every task
    assert "lora is not ahead of base on docvqa_val" in capsys.readouterr().out
    assert leaderboard.main([str(js), "--expect-ahead", "lora:base@mmmu_val,mathvista_testmini"]) == 2
    assert ("task 'mathvista_testmini' is not on the leaderboard; tasks: mmmu_val, docvqa_val, "
            "refcoco_testA") in capsys.readouterr().out
    assert leaderboard.main([str(js), "--expect-ahead", "lora:nobody"]) == 2
    assert "checkpoint 'nobody' is not on the leaderboard" in capsys.readouterr().out
    for bad in ("lora:base@", "lora:base@mmmu_val,", "lora@mmmu_val"):
        with pytest.raises(SystemExit):
            leaderboard.main([str(js), "--expect-ahead", bad])
    with pytest.raises(ValueError, match="'nope' is not on the leaderboard"):
        leaderboard.ahead_failures(leaderboard.load([js]), "lora", "base", tasks=["nope"])
    assert leaderboard.ahead_failures(leaderboard.load([js]), "lora", "base", tasks=["mmmu_val"]) == []


def test_cli_merges_runs_and_writes_every_format(tmp_path, capsys):
    first = write_results(tmp_path / "run1", ROWS[:3])
    second = write_results(tmp_path / "run2", ROWS[3:])
    stem = tmp_path / "out/board"
    assert leaderboard.main([str(first), str(second / "results"), "--out", str(stem), "--base", "base",
                             "--html", "--png"]) == 0
    assert "| lora | 45.2 (+4.2) | 75.0 (-5.0) | 90.0 (+20.0) |" in capsys.readouterr().out
    for suffix in (".md", ".json", ".html", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 0, suffix
    assert len(json.loads(stem.with_suffix(".json").read_text())) == 6
    # A leaderboard merged with a newer run: the newer score replaces the old one.
    newer = write_results(tmp_path / "run3", [row("lora", "docvqa_val", 0.85, "2026-12-01T00:00:00Z")])
    assert leaderboard.main([str(stem.with_suffix(".json")), str(newer), "--expect-ahead", "lora:base"]) == 0
    assert leaderboard.main([str(first), "--base", "nope"]) == 2
    assert "'nope' is not on the leaderboard" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        leaderboard.main([str(first), "--html"])  # --html needs --out


def test_figures_for_the_runner(tmp_path):
    html, png = leaderboard.write_figures(ROWS, tmp_path / "board", base="base")
    assert (html, png) == (tmp_path / "board.html", tmp_path / "board.png")
    assert html.read_text().count('class="bar"') == len(ROWS) and png.stat().st_size > 0


def test_wandb_table_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    leaderboard.log_wandb(ROWS, "leaderboard-test")
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/leaderboard_*.table.json"))
    assert len(tables) == 1, list(tmp_path.rglob("*"))
    table = json.loads(tables[0].read_text())
    assert table["columns"] == list(leaderboard.TABLE_KEYS) == list(ENTRY_KEYS[:-1])
    assert [r[1:4] for r in table["data"]][:2] == [["base", "MMMU", "mmmu_val"], ["base", "DocVQA", "docvqa_val"]]
    assert len(table["data"]) == len(ROWS)


def test_wandb_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(RuntimeError, match="pip install wandb"):
        leaderboard.log_wandb(ROWS, "leaderboard-test")


def scored_row(checkpoint: str, task: str, items: list[float], **extra) -> dict:
    """A results row as this version's runner writes it: interval and per-item scores."""
    from eval.stats import bootstrap_ci

    return row(checkpoint, task, sum(items) / len(items), n=len(items), ci=list(bootstrap_ci(items)),
               items="0123456789abcdef", item_scores=items, **extra)


# 200 items; "good" fixes 40 of base's errors and breaks 10 (McNemar mid-p ~ 1e-5); "same" swaps
# 5 errors for 5 others (p = 1); "lucky" fixes 6 and breaks 3 (ahead by 1.5 points, p ~ 0.3).
BASE = [1.0] * 100 + [0.0] * 100
GOOD = [0.0] * 10 + [1.0] * 90 + [1.0] * 40 + [0.0] * 60
SAME = [0.0] * 5 + [1.0] * 95 + [1.0] * 5 + [0.0] * 95
LUCKY = [0.0] * 3 + [1.0] * 97 + [1.0] * 6 + [0.0] * 94
NOISE_ROWS = [scored_row("base", "mmmu_val", BASE), scored_row("good", "mmmu_val", GOOD),
              scored_row("same", "mmmu_val", SAME), scored_row("lucky", "mmmu_val", LUCKY)]


def test_markdown_shows_intervals_significance_and_unparsed():
    text = leaderboard.markdown(NOISE_ROWS, base="base")
    cells = dict(tuple(c.strip() for c in line.strip("|").split("|")) for line in text.splitlines()[2:6])
    assert re.fullmatch(r"50\.0 \[4\d\.\d, 5\d\.\d\]", cells["base"]), cells
    assert cells["good"].endswith("(+15.0*)") and cells["good"].startswith("65.0 [")
    assert cells["same"].endswith("(+0.0)")
    assert cells["lucky"].endswith("(+1.5)")                      # ahead, but not significantly
    assert "95% bootstrap interval" in text and "significant, p < 0.05" in text
    assert "Unparsed replies (scored 0): base/mmmu_val=1/200" in text
    # Other items (another item hash): no test, so no mark, whatever the delta.
    other = [dict(NOISE_ROWS[0]), dict(NOISE_ROWS[1], items="fedcba9876543210")]
    assert "| good | 65.0 [" in leaderboard.markdown(other, base="base")
    assert "*)" not in leaderboard.markdown(other, base="base")


def test_expect_ahead_significant(tmp_path, capsys):
    _, js = leaderboard.write(NOISE_ROWS, tmp_path / "board")
    entries = leaderboard.load([js])
    assert entries[1]["item_scores"] == GOOD and entries[1]["ci"] is not None  # round trip
    assert leaderboard.main([str(js), "--expect-ahead", "good:base", "--significant"]) == 0
    assert "ahead on every task (significantly): good:base" in capsys.readouterr().out
    assert leaderboard.main([str(js), "--expect-ahead", "lucky:base"]) == 0
    assert leaderboard.main([str(js), "--expect-ahead", "lucky:base", "--significant"]) == 1
    assert re.search(r"lucky is ahead of base on mmmu_val but not significantly: 0\.515 vs 0\.5, "
                     r"p=0\.\d+ >= 0\.05", capsys.readouterr().out)
    assert leaderboard.main([str(js), "--expect-ahead", "lucky:base", "--significant",
                             "--alpha", "0.5"]) == 0
    # Rows without item scores cannot show significance: said, and a failure.
    _, old = leaderboard.write(ROWS, tmp_path / "old")
    assert leaderboard.main([str(old), "--expect-ahead", "lora:base", "--significant"]) == 1
    assert "no per-item scores over the same items" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        leaderboard.main([str(js), "--significant"])          # needs --expect-ahead
    with pytest.raises(SystemExit):
        leaderboard.main([str(js), "--expect-ahead", "good:base", "--alpha", "5"])


def test_html_carries_intervals_and_pvalues(tmp_path):
    html = leaderboard.write_html(NOISE_ROWS, tmp_path / "board.html", base="base").read_text()
    assert html.count('class="ci"') == 4 and 'data-alpha="0.05"' in html
    cell = re.search(r'<tr data-checkpoint="good">.*?data-p="([^"]*)"', html).group(1)
    pvalues = json.loads(cell.replace("&quot;", '"'))
    assert set(pvalues) == {"base", "same", "lucky"} and pvalues["base"] < 1e-4
    assert 'title="n=200, unparsed 1"' in html
