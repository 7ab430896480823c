"""Sources: read an on-disk corpus into ``Sample``s. This package only registers the readers;
each format lives in its own module:

- ``chat.py``: ``llava_json`` (Qwen-finetune / LLaVA) and ``messages`` (OpenAI-style chats, also
  LLaMA-Factory / ms-swift rows with ``images`` / ``videos`` lists), and the chat converters
  other readers hand their chats to;
- ``sharegpt.py``: ``sharegpt`` (ShareGPT / LLaMA-Factory sharegpt; ``llava_json`` is this
  reader); ``alpaca.py``: ``alpaca`` (LLaMA-Factory alpaca); ``swift.py``: ``swift`` (ms-swift
  rows, grounding ``objects``: ``objects.py``); ``llamafactory.py``: ``llamafactory`` (a
  LLaMA-Factory ``dataset_info.json`` entry, read with its columns and tags);
- ``turns.py``: turns + media -> ``Sample``, the conversion every chat format ends in (tags,
  placement, checks); ``media_refs.py``: a record's media lists and the roots they resolve
  against; ``layouts.py``: which layout a record is in (the format to pick);
  ``json_source.py``: the per-record loop of the JSON formats;
- ``documents.py``: ``pdf`` and ``page_images``;
- ``hf_dataset.py``: ``hf_dataset`` (a hub id, parquet, arrow or ``save_to_disk`` data);
- ``grounding.py``: ``coco``, ``refcoco`` and ``screenspot``;
- ``records.py``: JSON / JSONL record reading with per-line errors (a leaf the readers share).

A reader is ``read(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]``; the format names a
config may use are ``data.config.SOURCE_FORMATS`` (a test keeps it equal to ``FORMATS``).
"""

from __future__ import annotations

from pathlib import Path

from data.config import SourceConfig
from data.samples import BadSampleLog, DataError, Sample
from data.sources import (
    alpaca,
    chat,
    documents,
    grounding,
    hf_dataset,
    llamafactory,
    sharegpt,
    swift,
)

# Every format a source config can name: reader(cfg, bad) -> samples.
FORMATS = {
    "llava_json": chat.read_llava_json,  # Qwen-finetune / LLaVA JSON or JSONL (= sharegpt)
    "sharegpt": sharegpt.read_sharegpt,  # ShareGPT / LLaMA-Factory sharegpt records
    "messages": chat.read_messages,  # OpenAI-style chat records (+ listed media)
    "alpaca": alpaca.read_alpaca,  # LLaMA-Factory alpaca records
    "swift": swift.read_swift,  # ms-swift rows (messages or query/response; objects)
    "llamafactory": llamafactory.read_llamafactory,  # a dataset_info.json entry
    "pdf": documents.read_pdf,  # PDFs / annotation files -> page-image samples
    "page_images": documents.read_page_images,  # folders of page images per document
    "hf_dataset": hf_dataset.read_hf_dataset,  # hub id, parquet or save_to_disk folder
    "coco": grounding.read_coco,  # COCO instances -> bbox_2d answers
    "refcoco": grounding.read_refcoco,  # referring expressions -> one bbox_2d / point_2d
    "screenspot": grounding.read_screenspot,  # GUI grounding -> point_2d / bbox_2d
}


def load(cfg: SourceConfig, bad: BadSampleLog | None = None) -> list[Sample]:
    """Read one configured source. Records that cannot become a sample go to ``bad`` (which
    raises at once under the ``error`` policy) with the file, record index, reason and the
    source's name."""
    return read_source(FORMATS, cfg, bad)


def read_source(readers: dict, cfg: SourceConfig, bad: BadSampleLog | None,
                messages_of=lambda sample: sample.messages) -> list:
    """``readers[cfg.format]`` on one source, then what every source config asks: bad records
    named with the source, ``max_samples``, the ``system_prompt`` put first in each item's
    messages (``messages_of``: a sample's messages, a preference pair's prompt)."""
    bad = bad or BadSampleLog("error")
    start = len(bad.records)
    items = readers[cfg.format](cfg, bad)
    bad.name_source(start, cfg.name)
    if cfg.max_samples is not None:
        items = items[:cfg.max_samples]
    if cfg.system_prompt:
        for item in items:
            messages = messages_of(item)
            if messages[0]["role"] != "system":
                messages.insert(0, {"role": "system",
                                    "content": [{"type": "text", "text": cfg.system_prompt}]})
    return items


def load_source(fmt: str, path: str | Path, image_root: str | Path | None = None,
                bad: BadSampleLog | None = None, *, video_root: str | Path | None = None,
                allow_outside_root: bool = False) -> list[Sample]:
    """Read ``path`` in format ``fmt`` (shorthand for ``load(SourceConfig(...))``)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose from {sorted(FORMATS)}")
    return load(SourceConfig(path=str(path), format=fmt,
                             image_root=str(image_root) if image_root else None,
                             video_root=str(video_root) if video_root else None,
                             allow_outside_root=allow_outside_root), bad)


def load_llava_json(path, image_root=None, bad: BadSampleLog | None = None) -> list[Sample]:
    return load_source("llava_json", path, image_root, bad)
