"""The leaderboard's HTML page in headless Chromium: it renders, the table sorts, the base
select recomputes the deltas, the chart has one bar per (task, checkpoint), and the page
fetches nothing and logs no errors.

Needs Debian's Chromium at /usr/bin/chromium and the playwright package. Without them the test
is skipped, unless QWEN3VL_REQUIRE_BROWSER=1 (as .ci/run sets), where it fails instead."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

from eval import leaderboard

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def entry(checkpoint: str, benchmark: str, task: str, score: float) -> dict:
    return {"model": "Qwen/Qwen3-VL-2B-Instruct", "checkpoint": checkpoint, "benchmark": benchmark,
            "task": task, "split": "validation", "metric": "accuracy", "n": 50, "score": score,
            "config_hash": "0123456789abcdef", "date": "2026-11-23T10:00:00Z"}


SCORES = {  # checkpoint -> task -> score; "sft" has no docvqa_val score
    "base": {"mmmu_val": 0.40, "mathvista_testmini": 0.30, "docvqa_val": 0.80},
    "lora-a": {"mmmu_val": 0.45, "mathvista_testmini": 0.20, "docvqa_val": 0.85},
    "sft": {"mmmu_val": 0.35, "mathvista_testmini": 0.50},
    "lora-b": {"mmmu_val": 0.50, "mathvista_testmini": 0.25, "docvqa_val": 0.70},
}
BENCHMARK = {"mmmu_val": "MMMU", "mathvista_testmini": "MathVista", "docvqa_val": "DocVQA"}
ENTRIES = [entry(ck, BENCHMARK[task], task, s) for ck, scores in SCORES.items() for task, s in scores.items()]


def chromium():
    """playwright's sync API, or a skip (a failure when the browser is required)."""
    missing = None
    if not CHROMIUM.is_file():
        missing = f"{CHROMIUM} not found"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            missing = "the playwright package is not installed"
    if missing is None:
        return sync_playwright
    if os.environ.get("QWEN3VL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{missing}; QWEN3VL_REQUIRE_BROWSER=1 needs it: apt-get install -y chromium "
                    f"(and pip install playwright)")
    pytest.skip(f"{missing} (apt-get install chromium to run the page test)")


@pytest.fixture
def server(tmp_path):
    """A static file server for tmp_path on 127.0.0.1 (any free port)."""
    handler = functools.partial(Quiet, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_page_renders_sorts_and_recomputes_deltas(tmp_path, server):
    sync_playwright = chromium()
    leaderboard.write_html(ENTRIES, tmp_path / "board.html", base="base")
    url = f"{server}/board.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)

            def column(i: int) -> list[str]:
                return page.eval_on_selector_all(
                    "#board tbody tr", f"rows => rows.map(r => r.cells[{i}].innerText.trim())")

            def checkpoints() -> list[str]:
                return page.eval_on_selector_all("#board tbody tr", "rows => rows.map(r => r.dataset.checkpoint)")

            # Renders: one row per checkpoint; score columns grouped by benchmark in first-seen order.
            assert checkpoints() == ["base", "lora-a", "sft", "lora-b"]
            heads = page.eval_on_selector_all("#board thead th", "hs => hs.map(h => h.dataset.task || h.innerText)")
            assert heads[3:] == ["mmmu_val", "mathvista_testmini", "docvqa_val"]
            mmmu = 3
            assert column(mmmu) == ["40.0", "45.0 (+5.0)", "35.0 (-5.0)", "50.0 (+10.0)"]
            assert column(5) == ["80.0", "85.0 (+5.0)", "", "70.0 (-10.0)"]

            # Sorting: numeric, ascending then descending; the missing score stays last.
            page.click("#board thead th[data-task=docvqa_val]")
            assert checkpoints() == ["lora-b", "base", "lora-a", "sft"]
            assert page.get_attribute("#board thead th[data-task=docvqa_val]", "aria-sort") == "ascending"
            page.click("#board thead th[data-task=docvqa_val]")
            assert checkpoints() == ["lora-a", "base", "lora-b", "sft"]
            assert page.get_attribute("#board thead th[data-task=docvqa_val]", "aria-sort") == "descending"
            page.click("#board thead th[data-task=mmmu_val]")
            assert checkpoints() == ["sft", "base", "lora-a", "lora-b"]  # 35 < 40 < 45 < 50, not text order
            page.click("#board thead th:first-child")
            assert checkpoints() == ["base", "lora-a", "lora-b", "sft"]

            # The base select recomputes every delta; "(none)" clears them.
            page.select_option("#base", "sft")
            assert dict(zip(checkpoints(), column(mmmu))) == {
                "base": "40.0 (+5.0)", "lora-a": "45.0 (+10.0)", "lora-b": "50.0 (+15.0)", "sft": "35.0"}
            assert dict(zip(checkpoints(), column(5)))["base"] == "80.0"  # sft has no docvqa score
            assert page.eval_on_selector_all("tr.base", "rs => rs.map(r => r.dataset.checkpoint)") == ["sft"]
            page.select_option("#base", "")
            assert sorted(column(mmmu)) == ["35.0", "40.0", "45.0", "50.0"]

            # The chart: one bar per (task, checkpoint) that has a score, sized by the score.
            bars = page.eval_on_selector_all(
                "#chart rect.bar", "bs => bs.map(b => [b.dataset.task, b.dataset.checkpoint, "
                                   "b.getBBox().height])")
            assert sorted((t, c) for t, c, _ in bars) == sorted((e["task"], e["checkpoint"]) for e in ENTRIES)
            assert len(bars) == len(ENTRIES) == 11
            height = {(t, c): h for t, c, h in bars}
            assert height[("mathvista_testmini", "sft")] == pytest.approx(2 * height[("mathvista_testmini", "lora-b")], rel=0.01)
            assert page.is_visible("#chart")

            assert errors == []
            assert requests == [url]  # self-contained: nothing else fetched
        finally:
            browser.close()


def test_missing_browser_skips_unless_required(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("QWEN3VL_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium not found"):
        chromium()
    monkeypatch.setenv("QWEN3VL_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium()


def test_page_shows_intervals_and_marks_significant_deltas(tmp_path, server):
    """Intervals beside the scores; '*' on a delta only where the paired test on the same items
    says p < 0.05 vs the base chosen in the select, its p-value in the tooltip."""
    from eval.stats import bootstrap_ci

    sync_playwright = chromium()
    items = {"base": [1.0] * 100 + [0.0] * 100,                       # 50%
             "good": [0.0] * 10 + [1.0] * 90 + [1.0] * 40 + [0.0] * 60,  # 65%: +40 -10 items
             "lucky": [0.0] * 3 + [1.0] * 97 + [1.0] * 6 + [0.0] * 94}   # 51.5%: +6 -3 items
    rows = [dict(entry(ck, "MMMU", "mmmu_val", sum(v) / len(v)), n=len(v), unparsed=2,
                 ci=list(bootstrap_ci(v)), items="0123456789abcdef", item_scores=v)
            for ck, v in items.items()]
    leaderboard.write_html(rows, tmp_path / "board.html", base="base")
    url = f"{server}/board.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)

            def cells() -> dict:
                return dict(page.eval_on_selector_all(
                    "#board tbody tr", "rows => rows.map(r => [r.dataset.checkpoint, "
                                       "r.cells[3].innerText.trim().replace(/\\s+/g, ' ')])"))

            shown = cells()
            assert shown["base"] == "50.0 [43.0, 57.0]"
            assert re.fullmatch(r"65\.0 \[\d\d\.\d, \d\d\.\d\] \(\+15\.0\*\)", shown["good"]), shown
            assert re.fullmatch(r"51\.5 \[\d\d\.\d, \d\d\.\d\] \(\+1\.5\)", shown["lucky"]), shown
            tip = page.get_attribute("tr[data-checkpoint=good] .delta", "title")
            assert tip.startswith("p = ") and float(tip.split()[2]) < 1e-4
            assert page.get_attribute("tr[data-checkpoint=good] td.score", "title") == "n=200, unparsed 2"
            page.select_option("#base", "good")                  # vs good, both others are worse
            shown = cells()
            assert shown["base"].endswith("(-15.0*)") and shown["lucky"].endswith("(-13.5*)")
            assert errors == []
        finally:
            browser.close()


def test_page_shows_reference_rows_and_gaps(tmp_path, server):
    """Qwen's published scores as shaded reference rows: they sort with the runs, never get a
    delta and are never offered as a base; the gap table and the sources follow the board."""
    sync_playwright = chromium()
    rows = [dict(e, split="testmini") if e["task"] == "mathvista_testmini" else e for e in ENTRIES]
    leaderboard.write_html(rows, tmp_path / "board.html", base="base", references=["qwen3vl-2b-instruct"])
    url = f"{server}/board.html"
    label = "ref: Qwen3-VL-2B-Instruct (tech report)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)

            def rows() -> list[list[str]]:
                return page.eval_on_selector_all(
                    "#board tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.innerText.trim()))")

            shown = rows()
            assert [r[0] for r in shown] == ["base", "lora-a", "sft", "lora-b", label]
            assert shown[-1][3:] == ["53.4", "61.3", "93.3†"]          # no delta on a reference
            assert page.is_visible("tr.ref")
            assert page.get_attribute("tr.ref td[data-task=docvqa_val]", "title").startswith(
                "DocVQA_test (test split), Table 4 (p.18)")
            options = page.eval_on_selector_all("#base option", "os => os.map(o => o.value)")
            assert options == ["", "base", "lora-a", "sft", "lora-b"]
            page.click("#board thead th[data-task=mmmu_val]")          # 35 40 45 50 53.4
            page.click("#board thead th[data-task=mmmu_val]")
            assert [r[0] for r in rows()][:2] == [label, "lora-b"]
            page.select_option("#base", "sft")
            assert next(r for r in rows() if r[0] == label)[3:] == ["53.4", "61.3", "93.3†"]
            gaps = page.eval_on_selector_all(
                "#gaps tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.innerText.trim()))")
            assert gaps[0] == ["base", label, "-13.4 (40.0 vs 53.4)", "-31.3 (30.0 vs 61.3)",
                               "-13.3† (80.0 vs 93.3)"]
            assert gaps[2][-1] == ""                                   # sft has no docvqa_val score
            assert "arXiv:2511.21631v2" in page.inner_text("ul.notes")
            assert page.eval_on_selector_all("#chart line.refline", "ls => ls.length") == 3
            assert errors == [] and requests == [url]
        finally:
            browser.close()
