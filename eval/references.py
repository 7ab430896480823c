"""Reference rows: Qwen's published scores for each Qwen3-VL size and mode, shown on the
leaderboard beside the runs, with each run's gap to them.

The numbers ship in ``eval/references/qwen3vl_tech_report.json``, copied from Qwen Team, "Qwen3-VL
Technical Report", arXiv:2511.21631v2 (27 Nov 2025), Tables 2 (p.15), 3 (p.16) and 4 (p.18); every
number carries its table and page. One reference is one model and mode, named e.g.
``qwen3vl-8b-instruct`` or ``qwen3vl-30b-a3b-thinking`` (``names()``).

How a published number meets our tasks (``TASKS_OF``):

    MMMU            -> mmmu_val, mmmu_val_qwen   (validation; the paper's row says "MMMU")
    MathVista_mini  -> mathvista_testmini
    DocVQA_test     -> docvqa_val: the paper publishes the test split only. The reference is
                       shown and the gap computed, but marked ``†`` (split differs): DocVQA's
                       validation and test sets are alike, so the gap is an indication, not a
                       like-for-like comparison. A run whose entry records split "test" is
                       compared plainly.
    RefCOCO-avg     -> one average over RefCOCO/RefCOCO+/RefCOCOg splits that the paper does not
                       name. The run side is the unweighted mean of our 8 split tasks
                       (``REFCOCO_SPLITS``), and only for a checkpoint scored on all 8; with fewer
                       the reference is shown without a gap, saying how many it has.
    ScreenSpot Pro  -> screenspot_pro
    ScreenSpot, ScreenSpot-v2: the paper tabulates no number; no reference (said in the notes).

Reference rows are published numbers, not runs: they have no interval and no item scores, are
never a base for deltas, and never take part in ``--expect-ahead`` or significance tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("references") / "qwen3vl_tech_report.json"

# paper benchmark -> {our task: the split it scores by default (used when an entry has none)}
TASKS_OF = {"MMMU": {"mmmu_val": "validation", "mmmu_val_qwen": "validation"},
            "MathVista": {"mathvista_testmini": "testmini"},
            "DocVQA": {"docvqa_val": "validation"},
            "ScreenSpot-Pro": {"screenspot_pro": "test"}}
REFCOCO_AVG = "RefCOCO-avg"
REFCOCO_SPLITS = ("refcoco_val", "refcoco_testA", "refcoco_testB", "refcoco+_val", "refcoco+_testA",
                  "refcoco+_testB", "refcocog_val", "refcocog_test")
NOT_PUBLISHED = {"screenspot": "ScreenSpot", "screenspot_v2": "ScreenSpot-v2"}
AUTO = "auto"  # the references whose hub id is a run's model


@dataclass(frozen=True)
class Reference:
    name: str             # e.g. qwen3vl-8b-instruct
    model: str            # e.g. Qwen3-VL-8B
    mode: str             # Instruct or Thinking
    hub_id: str           # e.g. Qwen/Qwen3-VL-8B-Instruct
    scores: tuple         # the table's score records of this model and mode
    label: str            # the table's short label, e.g. "tech report"

    @property
    def row_label(self) -> str:
        """The reference's row label on the leaderboard."""
        return f"ref: {self.model}-{self.mode} ({self.label})"

    def score(self, benchmark: str) -> dict | None:
        return next((s for s in self.scores if s["benchmark"] == benchmark), None)


@cache
def load_table(path: Path = TABLE) -> tuple[dict, dict[str, Reference]]:
    """The table's header (source, notes) and its references by name."""
    doc = json.loads(Path(path).read_text())
    by_model: dict[tuple[str, str], list[dict]] = {}
    for record in doc["scores"]:
        missing = [k for k in ("model", "mode", "hub_id", "benchmark", "split", "score", "source")
                   if k not in record]
        if missing or not {"table", "page", "url"} <= set(record.get("source") or {}):
            raise ValueError(f"{path}: a score without {missing or 'source table/page/url'}: {record}")
        by_model.setdefault((record["model"], record["mode"]), []).append(record)
    refs = {}
    for (model, mode), records in by_model.items():
        name = f"{model}-{mode}".lower().replace("qwen3-vl", "qwen3vl")
        refs[name] = Reference(name, model, mode, records[0]["hub_id"], tuple(records), doc["label"])
    return {k: v for k, v in doc.items() if k != "scores"}, refs


def names() -> list[str]:
    return list(load_table()[1])


def resolve(requested: list[str], entries: list[dict]) -> list[Reference]:
    """The references asked for, in order, without repeats; ``auto`` stands for those whose hub
    id is some entry's ``model``. An unknown name raises a one-line ValueError with the choices."""
    refs = load_table()[1]
    chosen: dict[str, Reference] = {}
    for name in requested:
        if name == AUTO:
            models = {e["model"] for e in entries}
            chosen.update({r.name: r for r in refs.values() if r.hub_id in models})
        elif name.lower() in refs:
            chosen.setdefault(name.lower(), refs[name.lower()])
        else:
            raise ValueError(f"unknown reference {name!r}; choices: {AUTO}, {', '.join(refs)}")
    return list(chosen.values())


def compare(entries: list[dict], columns: list[dict], checkpoints: list[str],
            refs: list[Reference]) -> dict:
    """What the leaderboard shows of ``refs`` for a board of ``entries``:

    rows   one per (reference, task on the board it has a number for), plus one per reference
           for RefCOCO-avg when a RefCOCO split task is on the board: {reference, checkpoint
           (the row label), model, benchmark, task (our task, or "RefCOCO-avg"), split (the
           paper's), metric, score (a fraction, like the entries'), match ("same", "split" or
           "average"), source {title, arxiv, table, page, url}, gaps {checkpoint: points or null}}
    gaps   one per (reference, checkpoint, such task): {reference, checkpoint, task, run (points),
           ref (points), gap (run minus reference, points; null when not comparable), match, why;
           for RefCOCO-avg also splits: [split tasks the checkpoint has, all of them]}
    notes  plain-text lines for under the table (caveats and sources)
    """
    if not refs:
        return {"rows": [], "gaps": [], "notes": []}
    header = load_table()[0]
    src = header["source"]
    score = {(e["checkpoint"], e["task"]): e["score"] for e in entries}
    split_of = {c["task"]: c["split"] for c in columns}
    metric_of = {c["task"]: c["metric"] for c in columns}
    on_board = [c["task"] for c in columns]
    refcoco = [t for t in REFCOCO_SPLITS if t in on_board]
    rows, gaps, mismatched = [], [], {}
    for ref in refs:
        for bench, tasks in TASKS_OF.items():
            published = ref.score(bench)
            for task in (t for t in on_board if t in tasks):
                if published is None:
                    continue
                ours = split_of[task] or tasks[task]
                match = "same" if ours == published["split"] else "split"
                if match == "split":
                    mismatched[task] = (published["paper_row"], published["split"], ours)
                row_gaps = {}
                for ck in checkpoints:
                    run = score.get((ck, task))
                    gap = None if run is None else round(100 * run - published["score"], 10)
                    row_gaps[ck] = gap
                    gaps.append({"reference": ref.name, "checkpoint": ck, "task": task,
                                 "run": None if run is None else 100 * run, "ref": published["score"],
                                 "gap": gap, "match": match,
                                 "why": None if run is not None else f"{ck} has no {task} score"})
                rows.append(_row(ref, published, task, metric_of[task], match, row_gaps, src))
        published = ref.score(REFCOCO_AVG)
        if refcoco and published is not None:
            row_gaps = {}
            for ck in checkpoints:
                have = [score[(ck, t)] for t in REFCOCO_SPLITS if (ck, t) in score]
                full = len(have) == len(REFCOCO_SPLITS)
                run = 100 * sum(have) / len(have) if full else None
                gap = None if run is None else round(run - published["score"], 10)
                row_gaps[ck] = gap
                gaps.append({"reference": ref.name, "checkpoint": ck, "task": REFCOCO_AVG, "run": run,
                             "ref": published["score"], "gap": gap, "match": "average",
                             "splits": [len(have), len(REFCOCO_SPLITS)],
                             "why": None if full else f"{ck} has {len(have)} of the "
                                                      f"{len(REFCOCO_SPLITS)} RefCOCO split tasks"})
            rows.append(_row(ref, published, REFCOCO_AVG, metric_of[refcoco[0]], "average",
                             row_gaps, src))
    notes = [("Reference rows: published numbers, not runs (no interval, not a base, not in "
              "--expect-ahead or significance tests). Gap = run minus reference, in points; Qwen's "
              "prompts, sampling and pixel budgets may differ from this run's.")]
    for task, (paper_row, theirs, ours) in mismatched.items():
        notes.append(f"†: {task}: the reference is {paper_row} ({theirs} split, the only one the "
                     f"report publishes), this run's is the {ours} split; the gap is across splits, "
                     f"an indication rather than a like-for-like comparison.")
    if refcoco and any(r["task"] == REFCOCO_AVG for r in rows):
        short = sorted({g["why"] for g in gaps if g["task"] == REFCOCO_AVG and g["why"]})
        notes.append(f"{REFCOCO_AVG}: one average over RefCOCO/RefCOCO+/RefCOCOg splits the report "
                     f"does not name; compared with the unweighted mean of our "
                     f"{len(REFCOCO_SPLITS)} split tasks ({', '.join(REFCOCO_SPLITS)}) only for a "
                     f"checkpoint scored on all of them"
                     + (f"; no gap: {'; '.join(short)}." if short else "."))
    unpublished = [t for t in on_board if t in NOT_PUBLISHED]
    if unpublished:
        why = "; ".join(f"{NOT_PUBLISHED[t]}: {header['not_published'].get(NOT_PUBLISHED[t], '')}"
                        for t in unpublished)
        notes.append(f"No reference for {', '.join(unpublished)}: the report tabulates ScreenSpot "
                     f"Pro only ({why}).")
    for ref in refs:
        pages = sorted({(s["source"]["table"], s["source"]["page"]) for s in ref.scores})
        notes.append(f"{ref.row_label}: {src['authors']}, \"{src['title']}\", arXiv:{src['arxiv']} "
                     f"({src['date']}), " + ", ".join(f"Table {t} (p.{p})" for t, p in pages)
                     + f", {src['url']}")
    return {"rows": rows, "gaps": gaps, "notes": notes}


def _row(ref: Reference, published: dict, task: str, metric: str, match: str, gaps: dict,
         src: dict) -> dict:
    return {"reference": ref.name, "checkpoint": ref.row_label, "model": ref.hub_id,
            "benchmark": published["benchmark"], "task": task, "split": published["split"],
            "metric": metric,
            "paper_row": published["paper_row"], "score": round(published["score"] / 100, 6),
            "match": match,
            "source": {"title": src["title"], "arxiv": src["arxiv"], **published["source"]},
            "gaps": gaps}


def gap_cell(gap: dict) -> str:
    """One run's gap to one reference: ``-3.2 (66.4 vs 69.6)``, ``†`` across splits; without a
    comparable score, why not (e.g. ``n/a: 3/8 splits (ref 85.6)``)."""
    if gap["gap"] is None:
        if gap["match"] == "average":
            have, total = gap["splits"]
            return f"n/a: {have}/{total} splits (ref {gap['ref']:.1f})"
        return ""
    mark = "†" if gap["match"] == "split" else ""
    return f"{gap['gap']:+.1f}{mark} ({gap['run']:.1f} vs {gap['ref']:.1f})"


def gap_table(view: dict) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """The gap table: task headers, and rows (checkpoint, reference label, cells)."""
    tasks = list(dict.fromkeys(r["task"] for r in view["rows"]))
    labels = {r["reference"]: r["checkpoint"] for r in view["rows"]}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for g in view["gaps"]:
        cells.setdefault((g["reference"], g["checkpoint"]), {})[g["task"]] = gap_cell(g)
    return tasks, [(ck, labels[name], [by_task.get(t, "") for t in tasks])
                   for (name, ck), by_task in cells.items()]
