"""Record reading shared by the source readers: JSON / JSONL records with per-line errors, and
the small value rules every reader applies (prompt templates filled from a record, answers).
A leaf module: it knows files and values, not formats.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from data.samples import BadSample, BadSampleLog, DataError


def read_records(path: Path) -> list[dict]:
    """A JSON list or a JSONL file, strictly: any malformed line stops with its line number."""
    return [record for _, record in iter_records(path, None)]


def iter_records(path: Path, bad: BadSampleLog | None):
    """(index, record) pairs of a JSON list or JSONL file.

    JSONL is read line by line: with a ``bad`` log, a line that is not valid UTF-8 or not valid
    JSON is recorded (index = line number - 1) and the rest of the file is still read; a JSON
    list must parse as a whole, so an error there names the line and stops.
    """
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    yield line_no - 1, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    _bad_line(path, line_no, f"not valid UTF-8 (byte {e.start} of the line)", bad)
                except json.JSONDecodeError as e:
                    _bad_line(path, line_no, f"invalid JSON ({e.msg})", bad)
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    yield from enumerate(records)


def _bad_line(path: Path, line_no: int, reason: str, bad: BadSampleLog | None) -> None:
    if bad is None:
        raise DataError(f"{path}: line {line_no}: {reason}")
    bad.add(BadSample(str(path), line_no - 1, None, f"line {line_no}: {reason}"))


def record_id(record, index: int) -> str | None:
    """A record's sample id: its ``id``, else its index; None when it is not an object."""
    return str(record.get("id", index)) if isinstance(record, dict) else None


def template_fields(template: str) -> set[str]:
    """The placeholder names of a ``str.format`` template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"prompt {template!r} is not a valid template: {e}") from None
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in parsed if name}


def answer_list(value, column: str) -> list[str]:
    """A str, number or list of them -> the non-empty answers; ValueError if none."""
    if value is None:
        raise ValueError(f"missing answer (column {column!r} is empty)")
    values = value if isinstance(value, list) else [value]
    answers = [str(v).strip() for v in values if v is not None and str(v).strip()]
    if not answers:
        raise ValueError(f"empty answer (column {column!r})")
    return answers
