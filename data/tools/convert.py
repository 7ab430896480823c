"""Any readable source -> our canonical JSONL: the ``messages`` format with content parts.

One line per sample: ``{"id": ..., "messages": [{"role", "content": [parts], "reasoning_content"?}]}``
where an image part is ``{"type": "image", "image": REF}`` (an absolute path, a data URI, or a
lazy ``pdfpage://`` / ``hfrow://`` reference) and a video part ``{"type": "video", "video": PATH
or [FRAME PATHS]}`` with its sampling options (``fps``, ``nframes``, ``sample_fps``). The
source's ``system_prompt`` is written into the samples. Reading the file back with ``format:
messages`` gives the same samples (messages, images, videos); samples the source reports as bad
are not written but returned in the log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data.config import SourceConfig
from data.media import images as images_lib
from data.samples import BadSampleLog, Sample
from data.sources import load


def _abs(ref: str) -> str:
    """A file path made absolute; data URIs and lazy references as they are."""
    if images_lib.is_inline(ref) or "://" in ref:
        return ref
    return os.path.abspath(ref)


def _video_part(ref) -> dict:
    source = [_abs(p) for p in ref.source] if ref.is_frames else _abs(ref.source)
    part = {"type": "video", "video": source}
    for key, value in (("fps", ref.fps), ("nframes", ref.num_frames), ("sample_fps", ref.frame_fps)):
        if value is not None:
            part[key] = value
    return part


def sample_record(sample: Sample) -> dict:
    """``sample`` as a canonical ``messages`` record (see the module doc)."""
    images, videos = iter(sample.images), iter(sample.videos)
    messages = []
    for message in sample.messages:
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                parts.append({"type": "image", "image": _abs(next(images))})
            elif part["type"] == "video":
                parts.append(_video_part(next(videos)))
            else:
                parts.append(dict(part))
        out = {"role": message["role"], "content": parts}
        if "reasoning_content" in message:
            out["reasoning_content"] = message["reasoning_content"]
        messages.append(out)
    return {"id": sample.id, "messages": messages}


def convert(source: SourceConfig, out_path: str | Path) -> tuple[int, BadSampleLog]:
    """Read ``source`` (any format) and write its samples to ``out_path`` as canonical JSONL.
    Returns (samples written, the log of samples that could not be read)."""
    bad = BadSampleLog("skip")
    samples = load(source, bad)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(sample_record(s), ensure_ascii=False) + "\n" for s in samples)
    return len(samples), bad
