"""``python -m eval.diff RUN_A RUN_B``: the items whose score changed between two runs, with the
prompts, both replies and both scores side by side, and the paired test over the common items.

A RUN is one checkpoint's predictions: the folder ``<output_dir>/predictions/<checkpoint>``
(every ``<task>.jsonl`` in it; per-rank parts of a killed data-parallel run included) or one
``<task>.jsonl`` file. Each item's newest record counts (a rescored or retried record
supersedes the older one, as in the runner). Tasks are compared where both runs have them;
items where both have a record.

Output: Markdown on stdout (``--out STEM`` writes ``STEM.md``; ``--html`` also ``STEM.html``, a
self-contained page with each item's images as inline thumbnails). Replies are shown on one line,
cut at ``--width`` characters in the Markdown (whole in the HTML). Records written before the
runner stored prompts show "(prompt not recorded)".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.leaderboard import _md
from eval.predictions import read_records
from eval.stats import paired_p

CHANGED = 1e-9  # scores that differ by more than this have changed


def run_files(run: Path) -> dict[str, Path]:
    """{task: predictions file} of a RUN (see the module docstring)."""
    run = Path(run)
    if run.is_file():
        if run.suffix != ".jsonl":
            raise ValueError(f"{run}: not a predictions file (<task>.jsonl) or folder")
        return {run.stem: run}
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such predictions folder or file; pass "
                                f"<output_dir>/predictions/<checkpoint> or a <task>.jsonl in it")
    files = {p.stem: p for p in sorted(run.glob("*.jsonl")) if ".rank" not in p.stem}
    files.update({p.stem.split(".rank")[0]: run / f"{p.stem.split('.rank')[0]}.jsonl"
                  for p in run.glob("*.rank*.jsonl")})
    if not files:
        raise ValueError(f"{run}: no <task>.jsonl predictions files; pass "
                         f"<output_dir>/predictions/<checkpoint>")
    return files


def newest(path: Path) -> dict[str, dict]:
    """Item id -> its newest scored record, in the order items were first written."""
    records: dict[str, dict] = {}
    for record in read_records(path):
        if "score" in record:
            records[record["id"]] = record
    return records


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """The comparison of one task's records: common items, both means, the paired p-value and
    the flipped items (worse in B first, then better)."""
    common = [i for i in a if i in b]
    if not common:
        return {"n": 0, "flips": []}
    sa, sb = [float(a[i]["score"]) for i in common], [float(b[i]["score"]) for i in common]
    flips = [(i, x, y) for i, x, y in zip(common, sa, sb) if abs(x - y) > CHANGED]
    flips.sort(key=lambda f: f[2] - f[1])
    return {"n": len(common), "score_a": sum(sa) / len(sa), "score_b": sum(sb) / len(sb),
            "p": paired_p(sa, sb), "worse": sum(y < x for _, x, y in flips),
            "better": sum(y > x for _, x, y in flips),
            "flips": [{"id": i, "a": a[i], "b": b[i]} for i, _, _ in flips]}


def diff_runs(run_a: Path, run_b: Path, tasks: list[str] | None = None) -> dict[str, dict]:
    """{task: comparison} for the tasks both runs have (or those named, which both must have)."""
    files_a, files_b = run_files(run_a), run_files(run_b)
    common = [t for t in files_a if t in files_b]
    if tasks:
        missing = [t for t in tasks if t not in common]
        if missing:
            raise ValueError(f"task {missing[0]!r} is not in both runs; tasks in both: {common}")
        common = tasks
    if not common:
        raise ValueError(f"{run_a} and {run_b} have no task in common ({sorted(files_a)} vs "
                         f"{sorted(files_b)})")
    return {t: compare(newest(files_a[t]), newest(files_b[t])) for t in common}


def _line(text, width: int | None = None) -> str:
    text = " ".join(str(text).split())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def markdown(result: dict[str, dict], name_a: str, name_b: str, width: int = 200) -> str:
    out = [f"# {_md(name_a)} vs {_md(name_b)}", ""]
    for task, c in result.items():
        out.append(f"## {_md(task)}")
        if not c["n"]:
            out += ["", "No items in common.", ""]
            continue
        out += ["", f"{c['n']} items in common: {100 * c['score_a']:.1f} vs {100 * c['score_b']:.1f} "
                    f"({100 * (c['score_b'] - c['score_a']):+.1f} points), {c['worse']} worse and "
                    f"{c['better']} better in {_md(name_b)}; paired test p = {c['p']:.3g}.", ""]
        if not c["flips"]:
            continue
        out += [f"| id | prompt | answer | {_md(name_a)} | score | {_md(name_b)} | score |",
                "|---|---|---|---|---|---|---|"]
        for f in c["flips"]:
            a, b = f["a"], f["b"]
            prompt = a.get("prompt", b.get("prompt", "(prompt not recorded)"))
            out.append(f"| {_md(f['id'])} | {_md(_line(prompt, width))} | "
                       f"{_md(_line(a.get('answer', ''), width))} | "
                       f"{_md(_line(a['prediction'], width))} | {a['score']:.2f} | "
                       f"{_md(_line(b['prediction'], width))} | {b['score']:.2f} |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.diff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", metavar="RUN_A", help="<output_dir>/predictions/<checkpoint> or a <task>.jsonl")
    parser.add_argument("run_b", metavar="RUN_B", help="the same, for the other run")
    parser.add_argument("--task", action="append", default=None, help="only this task (repeatable)")
    parser.add_argument("--out", metavar="STEM", help="write STEM.md (and STEM.html with --html)")
    parser.add_argument("--html", action="store_true", help="also write STEM.html with the images")
    parser.add_argument("--width", type=int, default=200, help="characters per reply in the Markdown")
    args = parser.parse_args(argv)
    if args.html and not args.out:
        parser.error("--html needs --out STEM")
    if args.width < 10:
        parser.error(f"--width {args.width}: use 10 or more characters")
    try:
        result = diff_runs(Path(args.run_a), Path(args.run_b), args.task)
    except (OSError, ValueError) as e:
        print(f"[diff] {e}")
        return 2
    name_a, name_b = _name(args.run_a), _name(args.run_b)
    text = markdown(result, name_a, name_b, args.width)
    print(text)
    if args.out:
        stem = Path(args.out)
        stem.parent.mkdir(parents=True, exist_ok=True)
        written = [stem.with_suffix(".md")]
        written[0].write_text(text, encoding="utf-8")
        if args.html:
            from eval.diff_html import render

            written.append(stem.with_suffix(".html"))
            written[1].write_text(render(result, name_a, name_b), encoding="utf-8")
        print("[diff] wrote " + " ".join(map(str, written)))
    return 0


def _name(run: str) -> str:
    path = Path(run)
    return f"{path.parent.name}/{path.stem}" if path.suffix == ".jsonl" else path.name


if __name__ == "__main__":
    sys.exit(main())
