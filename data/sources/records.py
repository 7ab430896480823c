"""Record reading shared by the source readers: JSON / JSONL records with per-line errors (a
file of one JSON object is one record; binary files are named as what they are), and the small
value rules every reader applies (prompt templates filled from a record, answers).
A leaf module: it knows files and values, not formats.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from data.samples import BadSample, BadSampleLog, DataError


def read_records(path: Path) -> list[dict]:
    """A JSON list (or one JSON object) or a JSONL file, strictly: any malformed line stops with
    its line number."""
    return [record for _, record in iter_records(path, None)]


# Leading bytes of files a JSON reader may be pointed at by mistake -> what the file is and
# what to do instead (said instead of "not valid UTF-8").
MAGIC = (
    (b"PAR1", "a parquet file; read it with format: hf_dataset"),
    (b"ARROW1", "an Arrow file; read it with format: hf_dataset"),
    (b"\xff\xff\xff\xff", ("an Arrow stream file (as datasets' save_to_disk writes); read its "
                           "folder with format: hf_dataset")),
    (b"\x1f\x8b", "gzip-compressed; decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive; unpack it first"),
    (b"%PDF", "a PDF; read it with format: pdf"),
    (b"\x89PNG", "a PNG image, not a data file"),
    (b"\xff\xd8\xff", "a JPEG image, not a data file"),
)


def check_data_file(path: Path) -> None:
    """DataError unless ``path`` is a file that may hold JSON text: a missing file, a folder, or
    a binary file (parquet, arrow, an archive...) is named with what to do instead."""
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        raise DataError(f"{path} is a folder; JSON formats read one .json / .jsonl file (a "
                        f"parquet or save_to_disk folder: format: hf_dataset; a LLaMA-Factory "
                        f"data folder: format: llamafactory)")
    with open(path, "rb") as f:
        head = f.read(1024)
    for magic, what in MAGIC:
        if head.startswith(magic):
            raise DataError(f"{path} is {what}")
    if b"\x00" in head:
        raise DataError(f"{path} is a binary file, not JSON text (UTF-16 text: re-encode it as "
                        f"UTF-8)")


def iter_records(path: Path, bad: BadSampleLog | None):
    """(index, record) pairs of a JSON list, a JSON object (one record, index 0) or a JSONL file.

    JSONL is read line by line: with a ``bad`` log, a line that is not valid UTF-8 or not valid
    JSON is recorded (index = line number - 1) and the rest of the file is still read; a JSON
    document must parse as a whole, so an error there names the line and stops. A ``.json``
    file holding JSON lines (which ``datasets`` and LLaMA-Factory accept) is read as JSONL.
    Binary files (parquet, arrow...) are named as what they are (``check_data_file``).
    """
    check_data_file(path)
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            yield from _iter_lines(path, f, bad)
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON lines in a .json
            yield from _iter_lines(path, text.encode("utf-8").splitlines(keepends=True), bad)
            return
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if isinstance(records, dict):  # one sample in a file of its own
        yield 0, records
        return
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of samples (or one sample object), got "
                        f"{type(records).__name__}")
    yield from enumerate(records)


def _iter_lines(path: Path, lines, bad: BadSampleLog | None):
    for line_no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield line_no - 1, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            _bad_line(path, line_no, f"not valid UTF-8 (byte {e.start} of the line)", bad)
        except json.JSONDecodeError as e:
            _bad_line(path, line_no, f"invalid JSON ({e.msg})", bad)


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
