"""Leaderboard: eval results from many runs, as one JSON list, a Markdown table, a static HTML
page, a PNG chart and (optionally) a wandb table.

Schema. The leaderboard JSON is a list of entries, each with exactly these keys (``ENTRY_KEYS``):

    model        base model path or hub id (str or null for very old results)
    checkpoint   the row label, e.g. "base", "lora-demo"
    benchmark    family display name, e.g. "MMMU", "RefCOCO", "synthetic"
    task         registered task name, e.g. "mmmu_val", "refcoco_testA"
    split        e.g. "validation", "testA", or null
    metric       e.g. "accuracy", "anls", "acc_iou50"
    n            number of samples scored
    score        float in [0, 1]
    config_hash  the run's cache key (16 hex chars) or null
    date         ISO-8601 UTC time of the run, e.g. "2026-11-23T10:00:00Z", or null
    unparsed     replies no answer could be read from (scored 0), or null (older results)
    ci           [low, high]: the score's 95% bootstrap interval (``eval.stats``), or null
    items        hash of the ordered item ids the score is over, or null
    item_scores  the per-item scores in that order, or null: what paired tests between two
                 checkpoints on the same ``items`` are computed from

Everything else a results row carries (adapter, breakdown, ...) stays in the eval's
``results/<checkpoint>.json``: the leaderboard compares scores; the results say how they came about.

Significance. Where two checkpoints have item scores over the same items, the Markdown and HTML
mark a delta vs the base with ``*`` when the paired test (McNemar mid-p for 0/1 scores, a
paired bootstrap otherwise; ``eval.stats.paired_p``) gives p < 0.05, and
``--expect-ahead A:B --significant`` requires that on every task.

Merging. Inputs are eval output folders, their ``results/`` folders, results files, or earlier
leaderboard files, in any mix; ``normalise`` turns each row into an entry. When the same
(checkpoint, task) appears more than once, the entry with the newest ``date`` wins (no date
counts as oldest; on a tie the one read last wins), so re-running an eval into a new folder
updates the board instead of duplicating rows. Entries keep the order in which their
(checkpoint, task) was first seen. The CLI warns when a checkpoint's merged entries come from
results of different weights (``mixed_weights``: their rows' ``fingerprint`` differs).

Reference rows (``eval.references``). ``--reference NAME`` (repeatable; ``auto``: the references
of the runs' models) adds Qwen's published scores for a Qwen3-VL size and mode, e.g.
``qwen3vl-8b-instruct``, as rows labelled ``ref: Qwen3-VL-8B-Instruct (tech report)`` under the
runs, a "gap vs reference" table (run minus reference, in points) and the caveats and sources
under it. They are not checkpoints: never a base, never in ``--expect-ahead`` or significance.
In the JSON they follow the entries with their own keys (``reference``, ``source``, ``match``,
``gaps``, ...; ``eval.references.compare``), and reading a leaderboard file back skips them.

Names and other text from results files are escaped in every output: HTML-escaped in the page
and in the Markdown (where ``[``, ``]``, ``|``, ... are also backslash-escaped), so that a name
is shown as text and never becomes markup, a link or a broken table.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

ENTRY_KEYS = ("model", "checkpoint", "benchmark", "task", "split", "metric", "n", "score",
              "config_hash", "date", "unparsed", "ci", "items", "item_scores")
TABLE_KEYS = ENTRY_KEYS[:-1]  # the wandb table: everything but the per-item scores
REQUIRED_KEYS = ("checkpoint", "task", "metric", "score", "n")


def normalise(row: dict, source: str) -> dict:
    """One leaderboard entry from a results row (current or pre-schema format) or from an
    existing entry. Rows written before results carried benchmark/split/config_hash/date had
    ``key`` for the hash and nothing for the rest: the benchmark comes from the task registry
    (the task name when unregistered), split and date stay null. ``source`` names the file and
    row in errors."""
    if not isinstance(row, dict):
        raise ValueError(f"{source}: expected an object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}")
    score = row["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError(f"{source}: score must be a number, got {score!r}")
    if isinstance(row["n"], bool) or not isinstance(row["n"], int):
        raise ValueError(f"{source}: n must be an integer, got {row['n']!r}")
    date = row.get("date")
    if date is not None:
        _parse_date(date, source)
    return {"model": row.get("model"), "checkpoint": str(row["checkpoint"]),
            "benchmark": row.get("benchmark") or _benchmark_of(row["task"]),
            "task": str(row["task"]), "split": row.get("split"), "metric": str(row["metric"]),
            "n": row["n"], "score": float(score),
            "config_hash": row.get("config_hash", row.get("key")), "date": date,
            **_noise_fields(row, source)}


def _noise_fields(row: dict, source: str) -> dict:
    """unparsed, ci, items, item_scores of a row (null where an older row has none), checked."""
    unparsed, ci, items, item_scores = (row.get(k) for k in ("unparsed", "ci", "items", "item_scores"))
    if unparsed is not None and (isinstance(unparsed, bool) or not isinstance(unparsed, int)):
        raise ValueError(f"{source}: unparsed must be an integer, got {unparsed!r}")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci)):
        raise ValueError(f"{source}: ci must be [low, high], got {ci!r}")
    if item_scores is not None:
        if not isinstance(item_scores, list) or not all(_number(v) for v in item_scores) \
                or len(item_scores) != row["n"]:
            raise ValueError(f"{source}: item_scores must be a list of n={row['n']} numbers")
        if not isinstance(items, str):
            raise ValueError(f"{source}: item_scores without the items hash they are over")
    return {"unparsed": unparsed, "ci": [float(v) for v in ci] if ci else None,
            "items": items if item_scores is not None else None, "item_scores": item_scores}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _benchmark_of(task: str) -> str:
    from eval.tasks import TASKS  # imported only for pre-schema rows: it loads the task modules

    return str(getattr(TASKS.get(task), "benchmark", task))


def _parse_date(date, source: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(date).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{source}: date is not ISO-8601: {date!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def merge(entries: list[dict]) -> list[dict]:
    """One entry per (checkpoint, task): the newest by date (see the module docstring)."""
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    best: dict[tuple[str, str], dict] = {}
    for entry in entries:
        key = (entry["checkpoint"], entry["task"])
        held = best.get(key)
        when = oldest if entry["date"] is None else _parse_date(entry["date"], key)
        if held is None or when >= (oldest if held["date"] is None else _parse_date(held["date"], key)):
            best[key] = entry
    return list(best.values())


def as_entries(rows: list[dict]) -> list[dict]:
    """Rows handed in by a caller (results rows or entries) as merged entries, so every output
    holds one entry per (checkpoint, task) whatever it is given."""
    return merge([normalise(r, f"row {i}") for i, r in enumerate(rows)])


def read_rows(path: Path) -> list[dict]:
    """The entries of one results or leaderboard file (a JSON list of rows)."""
    return [normalise(row, f"{path}: row {i}") for i, row in enumerate(_read_list(Path(path)))]


def _read_list(path: Path) -> list:
    """The run rows of a JSON list file: a leaderboard's reference rows are left out."""
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of result rows, got {type(rows).__name__}")
    return [row for row in rows if not (isinstance(row, dict) and "reference" in row)]


def mixed_weights(sources: list[str | Path]) -> list[str]:
    """A message for each checkpoint name whose entries, after merging, come from results of
    different weights (the results rows' ``fingerprint``): a name reused for a retrained model
    in another output folder would otherwise show one model's score on one task beside another
    model's on the next. One eval folder never holds such a mix (``eval.results``); rows
    without a fingerprint (older versions, leaderboard files) are not compared."""
    tagged = [dict(normalise(row, f"{path}: row {i}"), fingerprint=row.get("fingerprint"))
              for source in sources for path in result_files(Path(source))
              for i, row in enumerate(_read_list(path))]
    weights: dict[str, dict[str, list[str]]] = {}
    for entry in merge(tagged):
        if entry["fingerprint"]:
            by_fp = weights.setdefault(entry["checkpoint"], {})
            by_fp.setdefault(str(entry["fingerprint"]), []).append(entry["task"])
    return [f"checkpoint {ck} mixes results of different weights ("
            + "; ".join(f"fingerprint {fp}: {', '.join(tasks)}" for fp, tasks in by_fp.items())
            + "): re-run the older tasks on the current weights, or give the models different names"
            for ck, by_fp in weights.items() if len(by_fp) > 1]


def result_files(source: Path) -> list[Path]:
    """The JSON files a source stands for: a file itself; an eval output folder's ``results/*.json``;
    else a folder's own ``*.json``."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such results file or folder")
    folder = source / "results" if (source / "results").is_dir() else source
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"{folder}: no results files (*.json) found")
    return files


def load(sources: list[str | Path]) -> list[dict]:
    """Merged entries from any mix of eval output folders, results folders, results files and
    leaderboard files, read in the order given."""
    return merge([entry for source in sources for path in result_files(Path(source))
                  for entry in read_rows(path)])


def collect(results_dir: Path) -> list[dict]:
    """Merged entries from every results file in one eval's ``results/`` folder (none: [])."""
    return merge([entry for path in sorted(Path(results_dir).glob("*.json"))
                  for entry in read_rows(path)])


def columns(entries: list[dict]) -> list[dict]:
    """One column per task, grouped by benchmark (benchmarks and tasks in order of first
    appearance): {task, metric, benchmark, split, n}; n is the sample count as text, e.g. "900",
    or "450/900" when checkpoints were scored on different numbers of samples."""
    by_task: dict[str, dict] = {}
    counts: dict[str, set[int]] = {}
    for e in entries:
        by_task.setdefault(e["task"], {k: e[k] for k in ("task", "metric", "benchmark", "split")})
        counts.setdefault(e["task"], set()).add(e["n"])
    for task, column in by_task.items():
        column["n"] = "/".join(map(str, sorted(counts[task])))
    order = list(dict.fromkeys(c["benchmark"] for c in by_task.values()))
    return sorted(by_task.values(), key=lambda c: order.index(c["benchmark"]))


def checkpoints(entries: list[dict]) -> list[str]:
    return list(dict.fromkeys(e["checkpoint"] for e in entries))


def score_table(entries: list[dict]) -> dict[tuple[str, str], float]:
    """{(checkpoint, task): score}."""
    return {(e["checkpoint"], e["task"]): e["score"] for e in entries}


def _check_base(entries: list[dict], base: str | None) -> None:
    if base is not None and base not in checkpoints(entries):
        raise ValueError(f"base checkpoint {base!r} is not on the leaderboard; "
                         f"checkpoints: {checkpoints(entries)}")


def entry_table(entries: list[dict]) -> dict[tuple[str, str], dict]:
    """{(checkpoint, task): entry}."""
    return {(e["checkpoint"], e["task"]): e for e in entries}


def paired_pvalue(a: dict | None, b: dict | None) -> float | None:
    from eval.stats import entries_pvalue  # numpy: imported when a table is drawn

    return entries_pvalue(a, b)


def reference_view(entries: list[dict], references: list[str] | None) -> dict:
    """``eval.references.compare`` for the named references (``--reference``) on this board."""
    from eval import references as refs_mod

    if not references:
        return {"rows": [], "gaps": [], "notes": []}
    refs = refs_mod.resolve(list(references), entries)
    return refs_mod.compare(entries, columns(entries), checkpoints(entries), refs)


def markdown(rows: list[dict], base: str | None = None, references: list[str] | None = None) -> str:
    """Rows = checkpoints, columns = task (metric), scores in % with their 95% interval where
    known: ``41.2 [38.0, 44.4]``. With ``base``, every other checkpoint's score also shows its
    difference from the base in points, ``*`` when the paired test says p < 0.05:
    ``41.2 (+3.1*)``. Unparsed counts follow the table. With ``references`` (names, see
    ``eval.references``): their rows under the runs, a gap table and their notes and sources."""
    from eval.stats import ALPHA

    entries = as_entries(rows)
    _check_base(entries, base)
    view = reference_view(entries, references)
    cols, table = columns(entries), entry_table(entries)
    lines = ["| checkpoint | " + " | ".join(_md(f"{c['task']} ({c['metric']})") for c in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    marked = False
    for ck in checkpoints(entries):
        cells = []
        for c in cols:
            entry, ref = table.get((ck, c["task"])), table.get((base, c["task"]))
            cell = "" if entry is None else f"{100 * entry['score']:.1f}"
            if entry is not None and entry["ci"]:
                cell += f" [{100 * entry['ci'][0]:.1f}, {100 * entry['ci'][1]:.1f}]"
            if entry is not None and ref is not None and ck != base:
                p = paired_pvalue(ref, entry)
                star = "*" if p is not None and p < ALPHA else ""
                marked |= bool(star)
                cell += f" ({100 * (entry['score'] - ref['score']):+.1f}{star})"
            cells.append(cell)
        lines.append(f"| {_md(ck)} | " + " | ".join(cells) + " |")
    for label, by_task in _reference_cells(view).items():
        cells = [_ref_value(by_task.get(c["task"])) for c in cols]
        lines.append(f"| {_md(label)} | " + " | ".join(cells) + " |")
    note = f"; deltas in points vs {_md(base)}" if base is not None else ""
    text = "\n".join(lines) + f"\n\nScores in %{note}. n per task: " + ", ".join(
        f"{_md(c['task'])}={c['n']}" for c in cols) + "\n"
    if any(e["ci"] for e in entries):
        text += "\n[low, high]: 95% bootstrap interval over items.\n"
    if base is not None and any(e["item_scores"] is not None for e in entries):
        text += (f"\n\\*: the delta is significant, p < {ALPHA} in a paired test on the same items "
                 f"(McNemar mid-p for 0/1 scores, paired bootstrap otherwise)"
                 + ("" if marked else "; none is") + ".\n")
    unparsed = [f"{_md(e['checkpoint'])}/{_md(e['task'])}={e['unparsed']}/{e['n']}"
                for e in entries if e["unparsed"]]
    if unparsed:
        text += "\nUnparsed replies (scored 0): " + ", ".join(unparsed) + "\n"
    if view["rows"]:
        text += "\n" + _gap_markdown(view)
    return text


def _reference_cells(view: dict) -> dict[str, dict[str, dict]]:
    """{reference row label: {task: reference row}} for the main table (RefCOCO-avg is no column)."""
    cells: dict[str, dict[str, dict]] = {}
    for r in view["rows"]:
        cells.setdefault(r["checkpoint"], {})[r["task"]] = r
    return cells


def _ref_value(ref_row: dict | None) -> str:
    if ref_row is None:
        return ""
    return f"{100 * ref_row['score']:.1f}" + ("†" if ref_row["match"] == "split" else "")


def _gap_markdown(view: dict) -> str:
    from eval.references import gap_table

    tasks, rows = gap_table(view)
    lines = ["Gap vs reference (run minus reference, in points; run vs reference in brackets):", "",
             "| checkpoint | reference | " + " | ".join(_md(t) for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 2)]
    lines += [f"| {_md(ck)} | {_md(label)} | " + " | ".join(_md(c) for c in cells) + " |"
              for ck, label, cells in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {_md(n)}" for n in view["notes"]) + "\n"


# Names and task texts come from results files anyone may have written: in Markdown, HTML
# would pass through to a renderer as markup ("<img onerror=...>"), "[x](javascript:...)"
# would become a link, and "|" would split the table cell. A backslash is doubled so that it
# cannot undo the escape of the character after it.
MD_ESCAPES = {"\\": "\\\\", "&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "[": "\\[",
              "]": "\\]", "`": "\\`", "*": "\\*"}


def _md(text) -> str:
    """``text`` as literal Markdown table-cell text (see ``MD_ESCAPES``); a line break would
    end the table row, so it becomes a space."""
    text = " ".join(str(text).splitlines())
    return "".join(MD_ESCAPES.get(ch, ch) for ch in text)


def write(rows: list[dict], stem: str | Path, base: str | None = None,
          references: list[str] | None = None) -> tuple[Path, Path]:
    """``<stem>.md`` and ``<stem>.json`` (the schema above; reference rows after the entries)."""
    entries = as_entries(rows)
    view = reference_view(entries, references)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(entries, base, references), encoding="utf-8")
    js.write_text(json.dumps(entries + view["rows"], indent=1))
    return md, js


def write_html(rows: list[dict], path: str | Path, base: str | None = None,
               references: list[str] | None = None) -> Path:
    """A self-contained page (no network): sortable table, deltas vs a base picked in the page
    (initially ``base``), reference rows and gaps (``references``), per-benchmark bar chart."""
    from eval.leaderboard_html import render

    entries = as_entries(rows)
    _check_base(entries, base)
    view = reference_view(entries, references)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(entries, columns(entries), checkpoints(entries), base, view=view),
                    encoding="utf-8")
    return path


def write_png(rows: list[dict], path: str | Path) -> Path:
    """Grouped bar chart: one group per task, one bar (and colour) per checkpoint. Drawn on a
    bare ``Figure``, not pyplot, so the caller's matplotlib backend is left alone."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    entries = as_entries(rows)
    cols, cks, score = columns(entries), checkpoints(entries), score_table(entries)
    width = 0.8 / max(len(cks), 1)
    fig = Figure(figsize=(max(6.0, 1.2 + len(cols) * (0.5 + 0.35 * len(cks))), 4.5))
    ax = fig.subplots()
    tab10 = colormaps["tab10"]
    for i, ck in enumerate(cks):
        xs = [j + (i - (len(cks) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(xs, [100 * score.get((ck, c["task"]), float("nan")) for c in cols], width,
               label=ck.replace("$", r"\$"), color=tab10(i % 10))  # "$" would start mathtext
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{c['benchmark']}\n{c['task']}\n({c['metric']})" for c in cols], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_figures(rows: list[dict], stem: str | Path, base: str | None = None,
                  references: list[str] | None = None) -> tuple[Path, Path]:
    """``<stem>.html`` and ``<stem>.png`` (see ``write_html`` and ``write_png``)."""
    stem = Path(stem)
    return (write_html(rows, stem.with_suffix(".html"), base, references),
            write_png(rows, stem.with_suffix(".png")))


def log_wandb(rows: list[dict], project: str, run_name: str | None = None, key: str = "leaderboard"):
    """Log the entries as a ``wandb.Table`` under ``key`` in a new run of ``project`` (honours
    WANDB_MODE / WANDB_DIR). Returns the finished run."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError("leaderboard --wandb needs wandb: pip install wandb") from None
    entries = as_entries(rows)
    run = wandb.init(project=project, name=run_name, job_type="leaderboard")
    try:
        run.log({key: wandb.Table(columns=list(TABLE_KEYS),
                                 data=[[_cell(e[k]) for k in TABLE_KEYS] for e in entries])})
    finally:
        run.finish()
    return run


def _cell(value):
    return str(value) if isinstance(value, list) else value


def ahead_failures(entries: list[dict], ahead: str, behind: str, significant: bool = False,
                   alpha: float | None = None, tasks: list[str] | None = None) -> list[str]:
    """Every task (of ``tasks``; None: every task on the board) on which checkpoint ``ahead``
    does not score strictly above ``behind`` (a missing score counts as 0), as messages; []
    when it is ahead everywhere. A task not on the board raises a ValueError. ``significant``:
    being ahead counts only where the paired test on the same items gives p < ``alpha``
    (default ``eval.stats.ALPHA``); a task without item scores over the same items fails, saying so."""
    from eval.stats import ALPHA

    alpha = ALPHA if alpha is None else alpha
    table = entry_table(entries)
    board = list(dict.fromkeys(e["task"] for e in entries))
    unknown = [t for t in tasks or () if t not in board]
    if unknown:
        raise ValueError(f"--expect-ahead {ahead}:{behind}@{','.join(tasks)}: task "
                         f"{', '.join(map(repr, unknown))} is not on the leaderboard; tasks: "
                         f"{', '.join(board)}")
    failures = []
    for task in (board if tasks is None else list(dict.fromkeys(tasks))):
        a, b = table.get((ahead, task)), table.get((behind, task))
        sa, sb = (a or {}).get("score"), (b or {}).get("score")
        if not (sa or 0.0) > (sb or 0.0):
            failures.append(f"{ahead} is not ahead of {behind} on {task}: {sa} vs {sb}")
        elif significant:
            p = paired_pvalue(b, a)
            if p is None:
                failures.append(f"{ahead} vs {behind} on {task}: no per-item scores over the same "
                                f"items to test significance (re-run both with this version, on "
                                f"the same items)")
            elif p >= alpha:
                failures.append(f"{ahead} is ahead of {behind} on {task} but not significantly: "
                                f"{sa} vs {sb}, p={p:.3g} >= {alpha}")
    return failures


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.leaderboard SOURCE... [--out STEM] [--base CK] [--reference NAME ...]
    [--html] [--png] [--wandb PROJECT] [--expect-ahead A:B[@TASK,...] ... [--significant]
    [--alpha P]]``: merge the sources (eval output folders, results folders, results or
    leaderboard files), print the table (with Qwen's published reference rows and the gaps to
    them, where asked), write what is asked, and exit 1 unless each checkpoint A scores above
    checkpoint B on every task, or on the tasks after @ (with --significant: by a paired test's
    p < 0.05 on the same items)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eval.leaderboard", description=main.__doc__)
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="eval output folder, results folder, results file or leaderboard file")
    parser.add_argument("--out", metavar="STEM", help="write STEM.md and STEM.json")
    parser.add_argument("--base", metavar="CHECKPOINT", help="show deltas vs this checkpoint")
    parser.add_argument("--html", action="store_true", help="also write STEM.html (needs --out)")
    parser.add_argument("--png", action="store_true", help="also write STEM.png (needs --out)")
    parser.add_argument("--wandb", metavar="PROJECT", help="log the entries as a wandb table")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME",
                        help="add Qwen's published scores for a model and mode as a reference row "
                             "with each run's gap to it, e.g. qwen3vl-8b-instruct; auto: those of "
                             "the runs' models (repeatable; eval/references.py)")
    parser.add_argument("--expect-ahead", action="append", default=[], metavar="A:B[@TASK,...]",
                        help="exit 1 unless checkpoint A scores above B on every task, or on the "
                             "comma-separated tasks after @ (repeatable)")
    parser.add_argument("--significant", action="store_true",
                        help="with --expect-ahead: A must be ahead by a significant margin (paired "
                             "test on the same items, p < --alpha) on every task")
    parser.add_argument("--alpha", type=float, default=None, metavar="P",
                        help="significance level of --significant (default 0.05)")
    args = parser.parse_args(argv)
    if (args.significant or args.alpha is not None) and not args.expect_ahead:
        parser.error("--significant and --alpha go with --expect-ahead A:B")
    if args.alpha is not None and not 0 < args.alpha < 1:
        parser.error(f"--alpha {args.alpha}: must be in (0, 1), e.g. 0.05")
    if (args.html or args.png) and not args.out:
        parser.error("--html and --png need --out STEM")
    expectations = []
    for pair in args.expect_ahead:
        names, at, task_list = pair.partition("@")
        a, _, b = names.partition(":")
        tasks = [t.strip() for t in task_list.split(",")] if at else None
        if not (a and b) or (tasks is not None and not all(tasks)):
            parser.error(f"--expect-ahead {pair!r}: expected AHEAD:BEHIND, two checkpoint names, "
                         f"optionally @TASK,TASK,... (e.g. lora:base@mmmu_val,docvqa_val)")
        expectations.append((a, b, tasks))
    try:
        entries = load(args.sources)
        _check_base(entries, args.base)
        if args.reference:
            reference_view(entries, args.reference)
        for a, b, tasks in expectations:  # errors before any output
            for ck in (a, b):
                if ck not in checkpoints(entries):
                    raise ValueError(f"--expect-ahead {a}:{b}: checkpoint {ck!r} is not on the "
                                     f"leaderboard (reference rows are not checkpoints); "
                                     f"checkpoints: {checkpoints(entries)}")
            if tasks:
                ahead_failures(entries, a, b, tasks=tasks)
        mixed = mixed_weights(args.sources)
    except (OSError, ValueError) as e:
        print(f"[leaderboard] {e}")
        return 2
    for message in mixed:
        print(f"[leaderboard] warning: {message}")
    if args.reference and not reference_view(entries, args.reference)["rows"]:
        print(f"[leaderboard] warning: --reference {' '.join(args.reference)}: no reference score "
              f"for a task on this board (or, with auto, no run of a Qwen3-VL release model)")
    print(markdown(entries, args.base, args.reference))
    if args.out:
        written = [*write(entries, args.out, args.base, args.reference)]
        if args.html:
            written.append(write_html(entries, Path(args.out).with_suffix(".html"), args.base,
                                      args.reference))
        if args.png:
            written.append(write_png(entries, Path(args.out).with_suffix(".png")))
        print("[leaderboard] wrote " + " ".join(map(str, written)))
    if args.wandb:
        log_wandb(entries, args.wandb)
    failures = []
    for a, b, tasks in expectations:
        failures += ahead_failures(entries, a, b, args.significant, args.alpha, tasks)
    for failure in failures:
        print(f"[leaderboard] {failure}")
    if args.expect_ahead and not failures:
        where = "every task" if all(t is None for *_, t in expectations) else "every task asked"
        print(f"[leaderboard] ahead on {where}{' (significantly)' if args.significant else ''}: "
              f"{', '.join(args.expect_ahead)}")
    return 1 if failures else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
