"""ms-swift's dataset rows (``format: swift``).

A JSON list (or JSONL, or one JSON object) of rows in either of ms-swift's layouts:

- ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}], "images":
  [...], "videos": [...]}``: read as ``format: messages`` reads them (chat.py), ``<image>`` /
  ``<video>`` tags taking the listed media in order;
- ``{"query": ..., "response": ..., "history": [[query, response], ...], "system": ...,
  "images": [...], "videos": [...]}``: history pairs, then the query, then the response, with
  ``system`` as a leading system turn.

Grounding: ``<ref-object>`` and ``<bbox>`` tags are filled from the row's ``objects`` (``ref``,
``bbox``, ``bbox_type`` real | norm1 | norm1000, ``image_id``), boxes written in Qwen3-VL's
relative [0, 1000) convention (objects.py); here a tag without ``objects``, like any count
mismatch, is a bad sample. Tool rows (``tools``, ``tool`` / ``tool_call`` / ``tool_response``
turns) and audio (``audios``, ``<audio>``) are reported as unsupported.
"""

from __future__ import annotations

from data.samples import Sample
from data.sources.alpaca import COLUMNS, alpaca_to_sample
from data.sources.chat import messages_to_sample
from data.sources.json_source import json_reader
from data.sources.layouts import wrong_layout
from data.sources.media_refs import MediaRoots

QUERY_COLUMNS = {**COLUMNS, "prompt": "query", "query": None, "response": "response"}


def swift_to_sample(record: dict, index: int, roots: MediaRoots, source: str) -> Sample:
    """An ms-swift row (see the module doc) as a sample."""
    if "messages" in record:
        return messages_to_sample(record, index, roots, source, objects_required=True)
    if "query" in record or "response" in record:
        return alpaca_to_sample(record, index, roots, source, QUERY_COLUMNS, objects_required=True)
    raise ValueError(wrong_layout(record, index, "swift", "'messages' list or 'query' / "
                                                          "'response'"))


read_swift = json_reader(swift_to_sample)
