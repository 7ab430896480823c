"""Small file writers the test files share: JSON / JSONL records and in-memory PNGs in the
``{"bytes", "path"}`` form ``datasets`` stores an image cell in."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def write_json(path: Path, records) -> Path:
    """``records`` as one JSON document (a list of records: the ``llava_json`` layout)."""
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records) -> Path:
    """``records`` one JSON value per line."""
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def png(size: tuple[int, int], color="white") -> dict:
    """A ``width x height`` PNG of one colour (a name or an RGB tuple), as an image cell of a
    ``datasets`` table."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}
