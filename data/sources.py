"""Sources: read an on-disk corpus into ``Sample``s.

``llava_json``: the Qwen-finetune / LLaVA layout, a JSON list (or JSONL) of records with
``image`` (a path or a list of paths), ``conversations`` (``from``: human | gpt | system) and
``<image>`` tags marking where each image goes. Image paths are relative to ``image_root``
(default: the JSON file's folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data.samples import BadSample, BadSampleLog, DataError, Sample

IMAGE_TAG = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}


def read_records(path: Path) -> list[dict]:
    """A JSON list or a JSONL file; a malformed file names the line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line_no}: invalid JSON ({e.msg})") from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def load_llava_json(path: str | Path, image_root: str | Path | None = None,
                    bad: BadSampleLog | None = None) -> list[Sample]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    root = Path(image_root) if image_root else path.parent
    bad = bad or BadSampleLog("error")
    samples = []
    for index, record in enumerate(read_records(path)):
        sample_id = str(record.get("id", index)) if isinstance(record, dict) else None
        try:
            samples.append(_to_sample(record, index, root, str(path)))
        except ValueError as e:
            bad.add(BadSample(str(path), index, sample_id, str(e)))
    return samples


def _to_sample(record: dict, index: int, root: Path, source: str) -> Sample:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    paths = [p if os.path.isabs(p) else str(root / p) for p in images]
    for original, p in zip(images, paths):
        if not os.path.isfile(p):
            raise ValueError(f"image file not found: {original} (looked for {p})")

    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("no 'conversations' list")
    n_tags = sum(str(t.get("value", "")).count(IMAGE_TAG) for t in turns)
    if n_tags == 0 and paths:
        # Repair rule: images without tags go before the first user text (LLaVA convention).
        first_user = next(i for i, t in enumerate(turns) if ROLES.get(t.get("from")) == "user")
        turns = [dict(t) for t in turns]
        turns[first_user]["value"] = IMAGE_TAG * len(paths) + "\n" + turns[first_user]["value"]
    elif n_tags != len(paths):
        raise ValueError(f"{n_tags} {IMAGE_TAG} tags but {len(paths)} images")

    messages = []
    for t in turns:
        role = ROLES.get(t.get("from"))
        if role is None:
            raise ValueError(f"unknown speaker {t.get('from')!r} (expected human, gpt or system)")
        messages.append({"role": role, "content": _content_parts(str(t.get("value", "")))})
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise ValueError("no non-empty assistant turn to learn from")
    return Sample(id=str(record.get("id", index)), messages=messages, images=paths,
                  source=source, index=index,
                  meta={k: v for k, v in record.items() if k not in ("image", "conversations")})


def _content_parts(text: str) -> list[dict]:
    parts = []
    for i, chunk in enumerate(text.split(IMAGE_TAG)):
        if i > 0:
            parts.append({"type": "image"})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts
