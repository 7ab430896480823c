"""Preference pairs from the synthetic corpus (``data.tools.synthetic``), for the DPO demo,
benchmark and tests: each record's answer is the chosen reply, and a wrong answer to the same
question is the rejected one (another record's answer to the same question text; for
grounding, the box mirrored left-right, so the rejected box sits on the wrong side).

Written in our preference JSONL layout (``messages`` prompt, ``chosen`` / ``rejected`` strings,
``images``), read with ``format: messages`` under ``train.objective: dpo``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def mirrored_boxes(answer: str) -> str | None:
    """A grounding answer with every ``bbox_2d`` mirrored left-right in [0, 1000); None when the
    answer holds no box, or the mirror is the same box."""
    try:
        objects = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(objects, list) or not objects:
        return None
    out = []
    for obj in objects:
        if not isinstance(obj, dict) or "bbox_2d" not in obj:
            return None
        x0, y0, x1, y1 = obj["bbox_2d"]
        out.append({**obj, "bbox_2d": [1000 - x1, y0, 1000 - x0, y1]})
    return None if out == objects else json.dumps(out)


def write_pairs(train_json: str | Path, out_path: str | Path, seed: int = 0) -> Path:
    """Pairs for every record of a synthetic split that has a wrong answer to offer; relative
    image paths stay relative to ``train_json``'s folder (write ``out_path`` beside it)."""
    train_json = Path(train_json)
    records = json.loads(train_json.read_text())
    answers: dict[str, set[str]] = {}
    for r in records:
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        answers.setdefault(question, set()).add(answer)
    rng = random.Random(seed)
    pairs = []
    for r in records:
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        wrong = sorted(answers[question] - {answer})
        rejected = rng.choice(wrong) if wrong and r.get("task") != "grounding" else \
            mirrored_boxes(answer)
        if rejected is None:
            continue
        pairs.append({"id": r["id"], "task": r.get("task"),
                      "messages": [{"role": "user", "content": question}],
                      "chosen": answer, "rejected": rejected, "images": [r["image"]]})
    out_path = Path(out_path)
    out_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return out_path
