"""Chat records -> ``Sample``: the ``llava_json`` and ``messages`` formats, and the converters
other readers hand their chats to (``llava_to_sample``, ``messages_to_sample``: a dataset's chat
column, document questions, grounding prompts), so all get the same checks and repair rules
(turns.py).

``llava_json`` (the default): a JSON list (or JSONL, or one JSON object) of records with
``image`` (a path or a list of paths), ``conversations`` (``from``: human | gpt | system) and
``<image>`` tags marking where each image goes; ``video`` (a video path or frame folder, or a
list of them: one entry per video, an entry may itself be a list of frame paths) with
``<video>`` tags. Media without any tag of their kind are placed before the first user text
(images, then videos); a tag count that differs from the media count is a bad sample. It is the
ShareGPT reader (sharegpt.py), so it also takes ``images`` / ``videos`` lists, ``role`` /
``content`` turns and a per-sample ``system``.

``messages``: OpenAI-style chat records (JSONL, a JSON list or one object), ``{"messages":
[{"role": ..., "content": str | [parts]}]}`` with parts ``{"type": "text", "text"}``,
``{"type": "image", "image": REF}`` or ``{"type": "image_url", "image_url": {"url": REF}}``; REF
is a path, a ``file://`` URL or a ``data:image/...;base64,`` URI (``data:image;base64,`` too);
``{"type": "video", "video": PATH or [FRAME PATHS]}`` or ``{"type": "video_url", "video_url":
{"url": PATH}}``. Assistant turns may carry ``reasoning_content``. The same records may instead
list their media at the top, as LLaMA-Factory's sharegpt-openai and ms-swift rows do:
``images`` / ``videos`` placed by ``<image>`` / ``<video>`` tags in string contents (or bare
``{"type": "image"}`` parts), in order across turns, with the rules of ``llava_json``; one
record uses one way or the other, never both. ``system`` (a per-sample system prompt) becomes
a leading system turn when the messages have none; ms-swift's ``objects`` fill
``<ref-object>`` / ``<bbox>`` tags (objects.py). Tool turns and ``tools``, and audio
(``audios``, ``<audio>``, audio parts), are reported as unsupported.

Videos (see data/media/video.py) take qwen-vl-utils' per-video keys, on the video part or
(listed videos) the record: ``fps`` (frames sampled per second of a video file) or ``nframes``
/ ``num_frames`` (exactly this many), and ``sample_fps`` (frame lists: the rate the frames were
taken at, default 2, for the timestamps).

Relative image paths resolve against ``image_root``, videos against ``video_root`` (default:
``image_root``; default of both: the data file's folder); paths leaving their root are refused
unless ``allow_outside_root`` (media_refs.py).
"""

from __future__ import annotations

from pathlib import Path

from data.samples import Sample
from data.sources.json_source import json_reader
from data.sources.layouts import wrong_layout
from data.sources.media_refs import MediaRoots, record_media
from data.sources.objects import has_object_tags
from data.sources.sharegpt import (
    LLAVA,
    SPEAKERS,
    TOOL_SPEAKERS,
    ShareGPTSpec,
    check_no_tools,
    sharegpt_to_sample,
)
from data.sources.turns import (
    IMAGE_TAG,
    MESSAGE_ROLES,
    NUMBERED_IMAGE_TAG,
    VIDEO_OPTIONS,
    VIDEO_TAG,
    chat_sample,
    system_turn,
    tagged_parts,
)

__all__ = [
    "IMAGE_TAG",
    "MESSAGE_ROLES",
    "NUMBERED_IMAGE_TAG",
    "VIDEO_OPTIONS",
    "VIDEO_TAG",
    "llava_to_sample",
    "messages_to_sample",
    "read_llava_json",
    "read_messages",
    "tagged_parts",
]
MESSAGE_KEYS = ("messages", "images", "image", "videos", "video", "system", "objects")


def llava_to_sample(record: dict, index: int, root: Path | MediaRoots, source: str, *,
                    confine: bool = True) -> Sample:
    """A LLaVA / Qwen-finetune record (``image``, ``video``, ``conversations``) as a sample.
    ``root``: a folder (``confine``: relative paths must stay in it) or ``MediaRoots``."""
    return sharegpt_to_sample(record, index, MediaRoots.of(root, confine), source, LLAVA)


def _message_turns(turns: list) -> list[dict]:
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"message {i} is not an object (got {type(turn).__name__})")
        role = turn.get("role")
        if role is None and "from" in turn:
            raise ValueError(f"message {i} has 'from'/'value' keys (the ShareGPT layout): set "
                             f"format: sharegpt")
        if role in TOOL_SPEAKERS or turn.get("tool_calls"):
            raise ValueError(f"message {i} is a tool call / {role!r} message: tool / "
                             f"function-calling turns are not supported; leave the sample out "
                             f"or drop its tool turns")
        if role not in MESSAGE_ROLES:
            hint = ("; ShareGPT speakers: set format: sharegpt"
                    if isinstance(role, str) and role in SPEAKERS else "")
            raise ValueError(f"role {role!r} is not one of {', '.join(MESSAGE_ROLES)} "
                             f"(message {i}{hint})")
        content = turn.get("content")
        if not isinstance(content, (str, list)):
            raise ValueError(f"content must be a string or a list of parts (message {i})")
        message = {"role": role, "content": content}
        if isinstance(turn.get("reasoning_content"), str):
            message["reasoning_content"] = turn["reasoning_content"]
        out.append(message)
    return out


def messages_to_sample(record: dict, index: int, root: Path | MediaRoots, source: str, *,
                       confine: bool = True, objects_required: bool = False) -> Sample:
    """An OpenAI-style ``{"messages": [...]}`` record as a sample (see the module doc).
    ``objects_required`` (format swift): ``<ref-object>`` / ``<bbox>`` tags need ``objects``."""
    if "messages" not in record:
        raise ValueError(wrong_layout(record, index, "messages", "'messages' list"))
    turns = record["messages"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("no 'messages' list")
    images, videos = record_media(record)
    check_no_tools(record, "tools")
    turns = system_turn(record, "system", _message_turns(turns))
    use_objects = objects_required or has_object_tags(turns)
    return chat_sample(turns, images, videos, MediaRoots.of(root, confine),
                       sample_id=str(record.get("id", index)), index=index, source=source,
                       meta={k: v for k, v in record.items() if k not in MESSAGE_KEYS},
                       video_options={k: record[k] for k in VIDEO_OPTIONS if k in record},
                       objects=record.get("objects") if use_objects else None,
                       objects_required=objects_required, unit="message")


LLAVA_JSON = ShareGPTSpec(fmt="llava_json")  # the sharegpt reader, under its own name

read_llava_json = json_reader(lambda r, i, roots, src: sharegpt_to_sample(r, i, roots, src,
                                                                          LLAVA_JSON))
read_messages = json_reader(messages_to_sample)
