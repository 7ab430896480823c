"""Chat records -> ``Sample``: the LLaVA / Qwen-finetune and OpenAI-messages layouts, and the
media tags in their text. Every reader that meets a chat (the JSON formats, chat columns of a
dataset, document questions, grounding prompts) converts it here, so all get the same checks
and repair rules.

``llava_json``: a JSON list (or JSONL) of records with ``image`` (a path or a list of paths),
``conversations`` (``from``: human | gpt | system) and ``<image>`` tags marking where each image
goes; ``video`` (a video path or frame folder, or a list of them: one entry per video, an entry
may itself be a list of frame paths) with ``<video>`` tags. Media without any tag of their kind
are placed before the first user text (images, then videos); a tag count that differs from the
media count is a bad sample.

``messages``: OpenAI-style chat records (JSONL or a JSON list), ``{"messages": [{"role": ...,
"content": str | [parts]}]}`` with parts ``{"type": "text", "text"}``, ``{"type": "image",
"image": REF}`` or ``{"type": "image_url", "image_url": {"url": REF}}``; REF is a path, a
``file://`` URL or a ``data:image/...;base64,`` URI; ``{"type": "video", "video": PATH or
[FRAME PATHS]}`` or ``{"type": "video_url", "video_url": {"url": PATH}}``.

Videos (see data/media/video.py) take qwen-vl-utils' per-video keys, on the video part or
(LLaVA) the record: ``fps`` (frames sampled per second of a video file) or ``nframes`` /
``num_frames`` (exactly this many), and ``sample_fps`` (frame lists: the rate the frames were
taken at, default 2, for the timestamps).

Relative media paths resolve against ``image_root`` (default: the data file's folder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from data.config import SourceConfig
from data.media import images as images_lib
from data.media import video as video_lib
from data.samples import BadSample, BadSampleLog, DataError, Sample
from data.sources.records import iter_records, record_id

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
NUMBERED_IMAGE_TAG = re.compile(r"<image (\d+)>")
VIDEO_OPTIONS = ("fps", "nframes", "num_frames", "sample_fps")  # qwen-vl-utils' per-video keys
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")


# --- Media tags in text ----------------------------------------------------------------------

def tagged_parts(text: str, images: dict | None = None) -> tuple[list[dict], list]:
    """Content parts of ``text`` with its media placed at their tags.

    Without ``images``: each ``<image>`` / ``<video>`` tag becomes an image / video part (the
    LLaVA convention: the n-th image tag is the record's n-th image); returns (parts, []).

    With ``images`` {n: image}: each ``<image n>`` tag (MMMU's) places image n where it first
    stands; a tag that repeats an image already shown stays in the text (an image is not sent
    twice); images no tag names go first, in number order. A tag naming no image is a
    ValueError. Returns the parts and the images in the order the parts hold them.
    """
    parts: list[dict] = []
    if images is None:
        for chunk in re.split(f"({re.escape(IMAGE_TAG)}|{re.escape(VIDEO_TAG)})", text):
            if chunk in (IMAGE_TAG, VIDEO_TAG):
                parts.append({"type": "image" if chunk == IMAGE_TAG else "video"})
            else:
                _add_text(parts, chunk)
        return parts, []
    shown: list[int] = []
    pos = 0
    for m in NUMBERED_IMAGE_TAG.finditer(text):
        n = int(m.group(1))
        if n not in images:
            raise ValueError(f"the text names <image {n}> but image_{n} is empty (no such image)")
        if n in shown:
            continue  # a repeat: the tag stays in the text
        _add_text(parts, text[pos:m.start()])
        parts.append({"type": "image"})
        shown.append(n)
        pos = m.end()
    _add_text(parts, text[pos:])
    unnamed = [n for n in sorted(images) if n not in shown]
    return [{"type": "image"} for _ in unnamed] + parts, [images[n] for n in unnamed + shown]


def _add_text(parts: list[dict], chunk: str) -> None:
    if chunk:
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += chunk
        else:
            parts.append({"type": "text", "text": chunk})


# --- The JSON chat formats -------------------------------------------------------------------

def _read_json_source(convert):
    """A reader for JSON/JSONL sources whose records each convert to one sample."""

    def read(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
        path = Path(cfg.path)
        if not path.exists():
            raise DataError(f"{path}: data file not found")
        root = Path(cfg.image_root) if cfg.image_root else path.parent
        samples = []
        for index, record in iter_records(path, bad):
            try:
                if not isinstance(record, dict):
                    raise ValueError(f"expected an object, got {type(record).__name__}")
                samples.append(convert(record, index, root, str(path)))
            except ValueError as e:
                bad.add(BadSample(str(path), index, record_id(record, index), str(e)))
        return samples

    return read


def llava_to_sample(record: dict, index: int, root: Path, source: str) -> Sample:
    """A LLaVA / Qwen-finetune record (``image``, ``video``, ``conversations``) as a sample."""
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    paths = [images_lib.resolve(p, str(root)) for p in images]
    for original, p in zip(images, paths):
        _check_image(original, p)

    videos = _llava_videos(record, root)

    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("no 'conversations' list")
    turns = _place_tags(turns, [(IMAGE_TAG, len(paths), "images"), (VIDEO_TAG, len(videos), "videos")])

    messages = []
    for t in turns:
        role = ROLES.get(t.get("from"))
        if role is None:
            raise ValueError(f"unknown speaker {t.get('from')!r} (expected human, gpt or system)")
        messages.append({"role": role, "content": tagged_parts(str(t.get("value", "")))[0]})
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise ValueError("no non-empty assistant turn to learn from")
    return Sample(id=str(record.get("id", index)), messages=messages, images=paths,
                  videos=videos, source=source, index=index,
                  meta={k: v for k, v in record.items()
                        if k not in ("image", "video", "conversations")})


def _llava_videos(record: dict, root: Path) -> list:
    """The record's ``video`` entries as checked ``VideoRef``s (a str: one video; a list: one
    video per entry, each a path, a frame folder or a list of frame paths)."""
    value = record.get("video")
    if value is None or value == []:
        return []
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        raise ValueError(f"'video' must be a path or a list, got {type(value).__name__}")
    options = {k: record[k] for k in VIDEO_OPTIONS if k in record}
    videos = []
    for entry in entries:
        ref = video_lib.make_ref(entry, str(root), options)
        _check_video(ref)
        videos.append(ref)
    return videos


def _place_tags(turns: list, media: list[tuple[str, int, str]]) -> list:
    """Check each kind's tag count against its media count. Repair rule (LLaVA convention):
    media with no tag of their kind at all go before the first user text."""
    missing = ""
    for tag, n_media, what in media:
        n_tags = sum(str(t.get("value", "")).count(tag) for t in turns if isinstance(t, dict))
        if n_tags == 0 and n_media:
            missing += tag * n_media
        elif n_tags != n_media:
            raise ValueError(f"{n_tags} {tag} tags but {n_media} {what}")
    if not missing:
        return turns
    users = [i for i, t in enumerate(turns) if isinstance(t, dict) and ROLES.get(t.get("from")) == "user"]
    if not users:
        raise ValueError("no human turn to place the untagged images/videos in")
    turns = [dict(t) for t in turns]
    turns[users[0]]["value"] = missing + "\n" + str(turns[users[0]].get("value", ""))
    return turns


def messages_to_sample(record: dict, index: int, root: Path, source: str) -> Sample:
    """An OpenAI-style ``{"messages": [...]}`` record as a sample (see the module doc)."""
    turns = record.get("messages")
    if not isinstance(turns, list) or not turns:
        raise ValueError("no 'messages' list")
    messages, images, videos = [], [], []
    for i, turn in enumerate(turns):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in MESSAGE_ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(MESSAGE_ROLES)} (message {i})")
        content = turn.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            parts = []
            for part in content:
                video = _video_ref(part, i, root)
                if video is not None:
                    if role != "user":
                        raise ValueError(f"videos are only read in user turns, not {role} (message {i})")
                    videos.append(video)
                    parts.append({"type": "video"})
                    continue
                ref = _image_ref(part, i)
                if ref is None:
                    parts.append({"type": "text", "text": part["text"]})
                    continue
                if role != "user":
                    raise ValueError(f"images are only read in user turns, not {role} (message {i})")
                resolved = images_lib.resolve(ref, str(root))
                _check_image(ref, resolved)
                images.append(resolved)
                parts.append({"type": "image"})
        else:
            raise ValueError(f"content must be a string or a list of parts (message {i})")
        message = {"role": role, "content": parts}
        if role == "assistant" and isinstance(turn.get("reasoning_content"), str):
            # Qwen / OpenAI-style reasoning: the Thinking template renders it in <think>;
            # the Instruct template has no reasoning and leaves it out.
            message["reasoning_content"] = turn["reasoning_content"]
        messages.append(message)
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise ValueError("no non-empty assistant turn to learn from")
    return Sample(id=str(record.get("id", index)), messages=messages, images=images,
                  videos=videos, source=source, index=index,
                  meta={k: v for k, v in record.items() if k != "messages"})


def _video_ref(part, i: int, root: Path):
    """The checked ``VideoRef`` of a video content part, or None for any other part."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "video" or (kind is None and "video" in part):
        value = part.get("video")
    elif kind == "video_url":
        value = part.get("video_url")
        value = value.get("url") if isinstance(value, dict) else value
    else:
        return None
    try:
        ref = video_lib.make_ref(value, str(root), {k: part[k] for k in VIDEO_OPTIONS if k in part})
    except ValueError as e:
        raise ValueError(f"{e} (message {i})") from None
    _check_video(ref)
    return ref


def _image_ref(part, i: int) -> str | None:
    """The image reference of a content part, or None for a text part."""
    if not isinstance(part, dict):
        raise ValueError(f"content part must be an object, got {part!r:.60} (message {i})")
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return None
    if kind == "image" and isinstance(part.get("image"), str):
        return part["image"]
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str):
            return url
    raise ValueError(f"unreadable content part {json.dumps(part)[:80]} (message {i})")


def _check_image(original: str, resolved: str) -> None:
    problem = images_lib.check(resolved)
    if problem:
        where = "" if images_lib.is_inline(resolved) else f": {original} (looked for {resolved})"
        raise ValueError(problem + where)


def _check_video(ref) -> None:
    problem = video_lib.check(ref)  # names the file
    if problem:
        raise ValueError(problem)


read_llava_json = _read_json_source(llava_to_sample)
read_messages = _read_json_source(messages_to_sample)
