"""The predictions files: ``predictions/<checkpoint>/<task>.jsonl``, one JSON record a line,
appended as batches finish (see ``eval.runner`` for what a record holds).

A run killed mid-write leaves a last line cut short. Reading skips any line that is not a
whole record (and says so, so that nobody wonders why a sample is generated again); writing
first repairs the tail, so that the next record starts on a line of its own instead of being
glued to the fragment and lost with it (which used to crash the summary with a KeyError).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def prediction_files(pred_path: Path) -> list[Path]:
    """The merged file and any per-rank parts a data-parallel run left (killed before merging)."""
    return [pred_path, *sorted(pred_path.parent.glob(f"{pred_path.stem}.rank*.jsonl"))]


def parse_record(line: str) -> dict | None:
    """The record a line holds, or None for a line that is not a whole one (cut by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or "prediction" not in record:
        return None
    return record


def read_records(pred_path: Path, note=None) -> list[dict]:
    """Every whole record of a task's files, in the order written. ``note(message)``, when
    given, hears about each line skipped."""
    records = []
    for path in prediction_files(pred_path):
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            record = parse_record(line)
            if record is not None:
                records.append(record)
            elif line.strip() and note is not None:
                note(f"{path}: line {n} is not a complete prediction record (a run killed "
                     f"mid-write?); skipped, and its sample is generated again")
    return records


def repair_tail(path: Path) -> None:
    """Make ``path`` end with a newline before anything is appended: a last record that is
    whole but lost its newline keeps its line; a cut-off fragment is removed (``read_records``
    has already said so when it skipped it)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        if parse_record(data[start:].decode(errors="replace")) is not None:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)


def open_append(path: Path):
    """``path`` opened for appending records, its tail repaired first (see ``repair_tail``)."""
    repair_tail(path)
    return open(path, "a")


def merge_parts(pred_path: Path) -> None:
    """Append the per-rank parts to the merged file, then delete them. A kill in between only
    leaves duplicate records, which the reader folds by sample id."""
    parts = prediction_files(pred_path)[1:]
    if not parts:
        return
    with open_append(pred_path) as f:
        for part in parts:
            repair_tail(part)
            f.write(part.read_text(errors="replace"))
        f.flush()
        os.fsync(f.fileno())
    for part in parts:
        part.unlink()
