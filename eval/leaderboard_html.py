"""The leaderboard's static HTML page: one self-contained file (inline CSS, JS and SVG, nothing
fetched), so it can be opened from disk, attached to a report or served from anywhere.

The table and the bar chart are rendered here, in Python, with every string escaped; the
script only rearranges what is already on the page: it sorts the table when a header is
clicked (numerically for score columns; a second click reverses) and writes each score's
delta vs the checkpoint chosen in the base select, with ``*`` where the paired test on the same
items (precomputed here for every pair of checkpoints, ``data-p``) gives p below the table's
``data-alpha``. Each score shows its 95% bootstrap interval where known, and its unparsed count
in its tooltip. Reference rows (Qwen's published scores, ``eval.references``; class ``ref``, no
``data-checkpoint``) sort with the runs but are never a base and get no delta; a table of each
run's gap to them, their caveats and sources follow, and the chart marks each reference score
with a dashed line over its task. Scores travel in ``data-score`` attributes, so the script never parses display
text and never builds HTML from data. (The
empty ``data:`` icon keeps browsers from asking a server for /favicon.ico.)
"""

from __future__ import annotations

import json
from html import escape

from eval.stats import ALPHA, entries_pvalue

# matplotlib's tab10, so the page and the PNG give each checkpoint the same colour.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")

CHART_HEIGHT = 200  # px of the 0-100 % axis
BAR_WIDTH, BAR_GAP, GROUP_GAP, MIN_GROUP = 14, 2, 24, 84
LEFT, TOP, BOTTOM = 44, 12, 56

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f4f4f4; cursor: pointer; user-select: none; vertical-align: bottom; }
th .bench, th .metric, th .n { display: block; font-weight: normal; font-size: 0.85em; color: #555; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.score { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.delta { font-size: 0.85em; }
.delta.pos { color: #1a7f37; } .delta.neg { color: #cf222e; }
.delta.sig { font-weight: bold; }
.ci { font-size: 0.8em; color: #666; }
tr.base td { background: #fff8c5; }
tr.ref td { background: #eef3fb; font-style: italic; }
.mark { color: #9a6700; }
ul.notes { font-size: 0.9em; color: #444; max-width: 70em; }
svg .refline { stroke: #333; stroke-width: 1.5; stroke-dasharray: 4 3; }
.legend span { display: inline-block; margin-right: 1em; }
.legend i { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: -0.1em; }
.chart { overflow-x: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .grid { stroke: #e5e5e5; }
"""

SCRIPT = """
(function () {
  const table = document.getElementById("board");
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const select = document.getElementById("base");
  const alpha = Number(table.dataset.alpha);

  function sortKey(row, i, numeric) {
    const cell = row.cells[i];
    if (!numeric) return cell.dataset.sort;
    return cell.dataset.score === "" ? null : Number(cell.dataset.score);
  }

  function sortBy(i) {
    const ascending = heads[i].getAttribute("aria-sort") !== "ascending";
    const numeric = heads[i].dataset.type === "num";
    heads.forEach(h => h.removeAttribute("aria-sort"));
    heads[i].setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = sortKey(a, i, numeric), y = sortKey(b, i, numeric);
      if (x === null || y === null) return (x === null) - (y === null);  // missing scores last
      const order = numeric ? x - y : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(row => body.appendChild(row));
  }

  function showDeltas() {
    const rows = Array.from(body.rows);
    const baseRow = rows.find(row => row.dataset.checkpoint === select.value);
    const reference = {};
    if (baseRow) {
      baseRow.querySelectorAll("td.score").forEach(cell => {
        if (cell.dataset.score !== "") reference[cell.dataset.task] = Number(cell.dataset.score);
      });
    }
    rows.forEach(row => {
      row.classList.toggle("base", row === baseRow);
      row.querySelectorAll("td.score").forEach(cell => {
        const span = cell.querySelector(".delta");
        if (!span) return;
        const ref = reference[cell.dataset.task];
        span.className = "delta";
        span.textContent = "";
        span.removeAttribute("title");
        if (row === baseRow || ref === undefined) return;
        const delta = 100 * (Number(cell.dataset.score) - ref);
        const p = JSON.parse(cell.dataset.p || "{}")[select.value];
        const significant = p !== undefined && p < alpha;
        span.textContent = "(" + (delta >= 0 ? "+" : "") + delta.toFixed(1) + (significant ? "*" : "") + ")";
        span.classList.add(delta > 0 ? "pos" : delta < 0 ? "neg" : "zero");
        if (significant) span.classList.add("sig");
        if (p !== undefined) span.title = "p = " + p.toPrecision(2) + " (paired test on the same items)";
      });
    });
  }

  heads.forEach((head, i) => head.addEventListener("click", () => sortBy(i)));
  select.addEventListener("change", showDeltas);
  showDeltas();
})();
"""


def render(entries: list[dict], columns: list[dict], checkpoints: list[str], base: str | None,
           title: str = "Leaderboard", view: dict | None = None) -> str:
    """The page for leaderboard entries; ``columns`` and ``checkpoints`` fix the order (see
    ``eval.leaderboard.columns``); ``base`` is the select's initial choice (None: no deltas);
    ``view``: reference rows, gaps and notes (``eval.references.compare``)."""
    view = view or {"rows": [], "gaps": [], "notes": []}
    colour = {ck: PALETTE[i % len(PALETTE)] for i, ck in enumerate(checkpoints)}
    score = {(e["checkpoint"], e["task"]): e["score"] for e in entries}
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p>Scores in %, with their 95% bootstrap interval over items where known. Deltas in points vs
{_base_select(checkpoints, base)} <b>*</b>: significant, p &lt; {ALPHA} in a paired test on the same
items (McNemar mid-p for 0/1 scores, paired bootstrap otherwise); hover a delta for its p-value.
Click a column header to sort; click again to reverse.{_reference_intro(view)}</p>
{_table(entries, columns, checkpoints, score, view)}
{_gaps(view)}
<h2>Scores per benchmark</h2>
<div class="legend">{"".join(f'<span><i style="background:{colour[ck]}"></i>{escape(ck)}</span>' for ck in checkpoints)}</div>
<div class="chart">{_chart(columns, checkpoints, score, colour, view)}</div>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _base_select(checkpoints: list[str], base: str | None) -> str:
    options = ['<option value="">(none)</option>'] + [
        f'<option value="{escape(ck)}"{" selected" if ck == base else ""}>{escape(ck)}</option>'
        for ck in checkpoints]
    return f'<select id="base" aria-label="base checkpoint">{"".join(options)}</select>.'


def _reference_intro(view: dict) -> str:
    if not view["rows"]:
        return ""
    return ("\nShaded italic rows are references: Qwen's published scores (sources below), not runs; "
            "<span class=\"mark\">†</span>: on another split than this column's.")


def _reference_rows(view: dict, columns: list[dict]) -> list[str]:
    by_label: dict[str, dict[str, dict]] = {}
    for r in view["rows"]:
        by_label.setdefault(r["checkpoint"], {})[r["task"]] = r
    rows = []
    for label, by_task in by_label.items():
        first = next(iter(by_task.values()))
        cells = [_text_cell(label), _text_cell(first["model"]), _text_cell("")]
        for c in columns:
            r = by_task.get(c["task"])
            if r is None:
                cells.append(f'<td class="score ref" data-task="{escape(c["task"])}" data-score=""></td>')
                continue
            src = r["source"]
            title = (f'{r["paper_row"]} ({r["split"]} split), Table {src["table"]} (p.{src["page"]}) '
                     f'of arXiv:{src["arxiv"]}')
            mark = '<span class="mark">†</span>' if r["match"] == "split" else ""
            cells.append(f'<td class="score ref" data-task="{escape(c["task"])}" '
                         f'data-score="{r["score"]!r}" title="{escape(title)}">'
                         f'<span class="value">{100 * r["score"]:.1f}</span>{mark}</td>')
        rows.append(f'<tr class="ref" data-reference="{escape(first["reference"])}">{"".join(cells)}</tr>')
    return rows


def _gaps(view: dict) -> str:
    """The gap of every run to every reference, then the caveats and sources."""
    if not view["rows"]:
        return ""
    from eval.references import gap_table

    tasks, rows = gap_table(view)
    head = "".join(f"<th>{escape(t)}</th>" for t in tasks)
    body = "".join(f'<tr data-checkpoint="{escape(ck)}"><td>{escape(ck)}</td><td>{escape(label)}</td>'
                   + "".join(f'<td class="score">{escape(c)}</td>' for c in cells) + "</tr>\n"
                   for ck, label, cells in rows)
    notes = "".join(f"<li>{escape(n)}</li>" for n in view["notes"])
    return (f'<h2>Gap vs reference</h2>\n<p>Run minus reference, in points (run vs reference in '
            f'brackets).</p>\n<table id="gaps">\n<thead><tr><th>checkpoint</th><th>reference</th>'
            f'{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n<ul class="notes">{notes}</ul>')


def _table(entries: list[dict], columns: list[dict], checkpoints: list[str], score: dict,
           view: dict) -> str:
    heads = ['<th data-type="text">checkpoint</th>', '<th data-type="text">model</th>',
             '<th data-type="text">date</th>']
    for c in columns:
        where = c["benchmark"] + (f" · {c['split']}" if c["split"] else "")
        heads.append(f'<th data-type="num" data-task="{escape(c["task"])}">'
                     f'<span class="bench">{escape(where)}</span>{escape(c["task"])}'
                     f'<span class="metric">{escape(c["metric"])}</span>'
                     f'<span class="n">n={escape(c["n"])}</span></th>')
    rows, table = [], {(e["checkpoint"], e["task"]): e for e in entries}
    for ck in checkpoints:
        mine = [e for e in entries if e["checkpoint"] == ck]
        model = ", ".join(dict.fromkeys(str(e["model"]) for e in mine if e["model"]))
        date = max((e["date"] for e in mine if e["date"]), default="")
        cells = [_text_cell(ck), _text_cell(model), _text_cell(date)]
        for c in columns:
            entry = table.get((ck, c["task"]))
            task = escape(c["task"])
            cells.append(f'<td class="score" data-task="{task}" data-score=""></td>' if entry is None
                         else _score_cell(entry, table, checkpoints))
        rows.append(f'<tr data-checkpoint="{escape(ck)}">{"".join(cells)}</tr>')
    rows += _reference_rows(view, columns)
    return (f'<table id="board" data-alpha="{ALPHA}">\n<thead><tr>{"".join(heads)}</tr></thead>\n'
            f'<tbody>\n{chr(10).join(rows)}\n</tbody>\n</table>')


def _score_cell(entry: dict, table: dict, checkpoints: list[str]) -> str:
    """A score, its interval, a slot for the delta, and the p-values vs every other checkpoint
    with item scores over the same items (the script picks the base's)."""
    pvalues = {}
    for other in checkpoints:
        if other != entry["checkpoint"]:
            p = entries_pvalue(table.get((other, entry["task"])), entry)
            if p is not None:
                pvalues[other] = p
    value, ci = entry["score"], entry["ci"]
    title = f'n={entry["n"]}' + (f', unparsed {entry["unparsed"]}' if entry["unparsed"] is not None else "")
    interval = f' <span class="ci">[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>' if ci else ""
    return (f'<td class="score" data-task="{escape(entry["task"])}" data-score="{value!r}" '
            f'data-p="{escape(json.dumps(pvalues))}" title="{escape(title)}">'
            f'<span class="value">{100 * value:.1f}</span>{interval} <span class="delta"></span></td>')


def _text_cell(text: str) -> str:
    return f'<td data-sort="{escape(text)}">{escape(text)}</td>'


def _chart(columns: list[dict], checkpoints: list[str], score: dict, colour: dict,
           view: dict | None = None) -> str:
    """Inline SVG: one group of bars per task (one bar per checkpoint that has a score), tasks
    of a benchmark side by side under the benchmark's name, a 0-100 % axis; a dashed line
    across a task's group for each reference score on it."""
    refs = (view or {}).get("rows", [])
    group = max(len(checkpoints) * (BAR_WIDTH + BAR_GAP), MIN_GROUP)
    width = LEFT + len(columns) * (group + GROUP_GAP)
    height = TOP + CHART_HEIGHT + BOTTOM
    parts = []
    for pct in (0, 25, 50, 75, 100):
        y = TOP + CHART_HEIGHT * (1 - pct / 100)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{width}" y1="{y}" y2="{y}"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{pct}%</text>')
    benchmark_span: dict[str, list[float]] = {}
    for j, c in enumerate(columns):
        x0 = LEFT + GROUP_GAP / 2 + j * (group + GROUP_GAP)
        bars_width = len(checkpoints) * (BAR_WIDTH + BAR_GAP)
        for i, ck in enumerate(checkpoints):
            value = score.get((ck, c["task"]))
            if value is None:
                continue
            h = CHART_HEIGHT * min(max(value, 0.0), 1.0)
            x = x0 + (group - bars_width) / 2 + i * (BAR_WIDTH + BAR_GAP)
            parts.append(f'<rect class="bar" data-task="{escape(c["task"])}" data-checkpoint="{escape(ck)}" '
                         f'x="{x}" y="{TOP + CHART_HEIGHT - h:.1f}" width="{BAR_WIDTH}" height="{h:.1f}" '
                         f'fill="{colour[ck]}"><title>{escape(ck)} · {escape(c["task"])}: '
                         f'{100 * value:.1f}%</title></rect>')
        for r in (r for r in refs if r["task"] == c["task"]):
            y = TOP + CHART_HEIGHT * (1 - min(max(r["score"], 0.0), 1.0))
            parts.append(f'<line class="refline" data-task="{escape(c["task"])}" '
                         f'data-reference="{escape(r["reference"])}" x1="{x0}" x2="{x0 + group}" '
                         f'y1="{y:.1f}" y2="{y:.1f}"><title>{escape(r["checkpoint"])} · '
                         f'{escape(c["task"])}: {100 * r["score"]:.1f}%</title></line>')
        parts.append(f'<text x="{x0 + group / 2}" y="{TOP + CHART_HEIGHT + 16}" text-anchor="middle">'
                     f'{escape(c["task"])}</text>')
        span = benchmark_span.setdefault(c["benchmark"], [x0, x0 + group])
        span[1] = x0 + group
    for name, (start, end) in benchmark_span.items():
        parts.append(f'<line x1="{start}" x2="{end}" y1="{TOP + CHART_HEIGHT + 26}" '
                     f'y2="{TOP + CHART_HEIGHT + 26}" stroke="#999"/>'
                     f'<text x="{(start + end) / 2}" y="{TOP + CHART_HEIGHT + 42}" text-anchor="middle" '
                     f'font-weight="bold">{escape(name)}</text>')
    return (f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="scores per benchmark">{"".join(parts)}</svg>')
