"""``samples_per_item`` k > 1: one result row from the k rows of one task scored with seeds
s, s+1, ..., s+k-1 (the same items in the same order).

The score is the mean over seeds; ``seed_scores`` lists each seed's and ``seed_sd`` their
standard deviation (n - 1 in the denominator; 0 for one seed): the spread a rerun with another
seed would show. ``item_scores`` becomes each item's mean over the seeds, so the interval and
paired tests are over items, with each item's sampling noise averaged in; ``unparsed`` is the
mean per seed (``unparsed_per_seed`` lists them).
"""

from __future__ import annotations

import hashlib

import numpy as np

from eval.stats import bootstrap_ci


def combine(rows: list[dict], seeds: list[int]) -> dict:
    first = rows[0]
    if any(r["items"] != first["items"] for r in rows):
        raise RuntimeError(f"task {first.get('task')}: the seeds were scored on different items")
    scores = [r["score"] for r in rows]
    items = np.mean([r["item_scores"] for r in rows], axis=0)
    row = dict(first)
    row.update(
        score=float(np.mean(scores)), seeds=seeds, seed_scores=scores,
        seed_sd=float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
        item_scores=[round(float(x), 4) for x in items], ci=list(bootstrap_ci(items)),
        unparsed=int(round(float(np.mean([r["unparsed"] for r in rows])))),
        unparsed_per_seed=[r["unparsed"] for r in rows],
        parse_rate=round(float(np.mean([r["parse_rate"] for r in rows])), 4),
        failed=sum(r["failed"] for r in rows),
        thinking_truncated=sum(r["thinking_truncated"] for r in rows),
        generated=sum(r["generated"] for r in rows), rescored=sum(r["rescored"] for r in rows),
        seconds=round(sum(r["seconds"] for r in rows), 2),
        config_hash=hashlib.sha1("/".join(r["config_hash"] for r in rows).encode()).hexdigest()[:16])
    if "breakdown" in first:
        row["breakdown"] = {g: {"score": float(np.mean([r["breakdown"][g]["score"] for r in rows])),
                                "n": v["n"]} for g, v in first["breakdown"].items()}
    return row
