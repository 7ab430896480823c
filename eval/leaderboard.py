"""Leaderboard: every results file under an eval folder, as a Markdown table and a JSON list."""

from __future__ import annotations

import json
from pathlib import Path


def collect(results_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        rows.extend(json.loads(path.read_text()))
    return rows


def markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    score = {(r["checkpoint"], r["task"]): r for r in rows}
    head = "| checkpoint | " + " | ".join(f"{t} ({m})" for t, m in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for ck in checkpoints:
        cells = []
        for task, _ in columns:
            r = score.get((ck, task))
            cells.append("" if r is None else f"{100 * r['score']:.1f}")
        lines.append(f"| {ck} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nScores in %, n per task: " + ", ".join(
        f"{t}={next(r['n'] for r in rows if r['task'] == t)}" for t, _ in columns) + "\n"


def write(rows: list[dict], stem: str | Path) -> tuple[Path, Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(rows))
    js.write_text(json.dumps([{k: r[k] for k in ("checkpoint", "task", "metric", "score", "n")}
                              for r in rows], indent=1))
    return md, js


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.leaderboard LEADERBOARD.json [--expect-ahead A:B ...]``: print it, and
    exit 1 unless checkpoint A scores above checkpoint B on every task."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eval.leaderboard")
    parser.add_argument("leaderboard")
    parser.add_argument("--expect-ahead", action="append", default=[], metavar="A:B")
    args = parser.parse_args(argv)
    rows = json.loads(Path(args.leaderboard).read_text())
    print(markdown(rows))
    failed = False
    for pair in args.expect_ahead:
        a, _, b = pair.partition(":")
        score = {(r["checkpoint"], r["task"]): r["score"] for r in rows}
        for task in dict.fromkeys(r["task"] for r in rows):
            if not score.get((a, task), 0.0) > score.get((b, task), 0.0):
                print(f"[leaderboard] {a} is not ahead of {b} on {task}: "
                      f"{score.get((a, task))} vs {score.get((b, task))}")
                failed = True
    if args.expect_ahead and not failed:
        print(f"[leaderboard] ahead on every task: {', '.join(args.expect_ahead)}")
    return 1 if failed else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
