"""LLaMA-Factory's alpaca layout (``format: alpaca``).

A JSON list (or JSONL, or one JSON object) of records ``{"instruction": ..., "input": ...,
"output": ..., "system": ..., "history": [[question, answer], ...], "images": [...], "videos":
[...]}``. As LLaMA-Factory builds it: each ``history`` pair is a user and an assistant turn,
then one user turn of ``instruction`` and ``input`` joined by a newline (either may be empty,
not both), then ``output`` as the assistant turn; ``system`` becomes a leading system turn.
Media follow the ShareGPT rules (sharegpt.py): ``<image>`` / ``<video>`` tags in the texts take
the listed ``images`` / ``videos`` in order; media without any tag go before the first user
text; other count mismatches, ``audios`` and ``<audio>`` are bad samples. ``output`` as a list
(a ranking / preference pair) is not supported. ``id``: the sample id (default: the record
index). ``llamafactory`` reads other column names through ``COLUMNS``.
"""

from __future__ import annotations

from data.samples import Sample
from data.sources.json_source import json_reader
from data.sources.layouts import wrong_layout
from data.sources.media_refs import MediaRoots, record_media
from data.sources.objects import has_object_tags
from data.sources.sharegpt import check_no_tools
from data.sources.turns import VIDEO_OPTIONS, chat_sample, system_turn, text_value

# role -> record key (LLaMA-Factory's column names); None: not read.
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
           "system": "system", "tools": "tools", "images": "images", "videos": "videos",
           "audios": "audios"}


def _text(record: dict, key: str | None) -> str:
    if not key or record.get(key) is None:
        return ""
    return text_value(record[key], f"{key!r}")


def _history(record: dict, key: str | None) -> list[dict]:
    value = record.get(key) if key else None
    if value in (None, []):
        return []
    if not isinstance(value, list):
        raise ValueError(f"{key!r} must be a list of [question, answer] pairs, got "
                         f"{type(value).__name__}")
    turns = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{key!r} entry {i} must be a [question, answer] pair, got "
                             f"{pair!r:.60}")
        turns += [{"role": "user", "content": text_value(pair[0], f"{key!r} entry {i}")},
                  {"role": "assistant", "content": text_value(pair[1], f"{key!r} entry {i}")}]
    return turns


def alpaca_to_sample(record: dict, index: int, roots: MediaRoots, source: str,
                     columns: dict[str, str | None] = COLUMNS,
                     objects_required: bool = False) -> Sample:
    """An alpaca record (see the module doc) as a sample; ``columns`` names its keys.
    ``objects_required`` (ms-swift rows): ``<ref-object>`` / ``<bbox>`` tags need ``objects``."""
    prompt, query, response = columns.get("prompt"), columns.get("query"), columns.get("response")
    if not any(k and k in record for k in (prompt, query, response)):
        raise ValueError(wrong_layout(record, index, "alpaca", f"{prompt!r} / {response!r}"))
    if response not in record or record[response] in (None, ""):
        raise ValueError(f"no {response!r} to learn from")
    if isinstance(record[response], list):
        raise ValueError(f"{response!r} is a list (a ranking / preference pair), which is not "
                         f"supported: give one answer")
    answer = text_value(record[response], f"{response!r}")
    question = "\n".join(t for t in (_text(record, prompt), _text(record, query)) if t)
    if not question:
        raise ValueError(f"empty {' and '.join(repr(k) for k in (prompt, query) if k)}: no "
                         f"question")
    images, videos = record_media(record, _keys(columns, "images"), _keys(columns, "videos"),
                                  _keys(columns, "audios"))
    check_no_tools(record, columns.get("tools"))
    turns = _history(record, columns.get("history")) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    turns = system_turn(record, columns.get("system"), turns)
    used = {v for v in columns.values() if v}
    use_objects = objects_required or has_object_tags(turns)
    return chat_sample(turns, images, videos, roots, sample_id=str(record.get("id", index)),
                       index=index, source=source,
                       meta={k: v for k, v in record.items() if k not in used},
                       video_options={k: record[k] for k in VIDEO_OPTIONS if k in record},
                       objects=record.get("objects") if use_objects else None,
                       objects_required=objects_required)


def _keys(columns: dict, role: str) -> tuple[str, ...]:
    return (columns[role],) if columns.get(role) else ()


read_alpaca = json_reader(alpaca_to_sample)
