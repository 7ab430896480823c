"""Chat turns + a record's media -> ``Sample``: the one conversion every chat format ends in, so
all get the same checks and repair rules.

A turn is ``{"role": "system" | "user" | "assistant", "content": str | [parts]}`` (plus
``reasoning_content`` on assistant turns). Media reach a sample in one of two ways, never both
in one record:

- listed: the record's ``images`` / ``videos`` lists, placed by ``<image>`` / ``<video>`` tags in
  string contents or by bare ``{"type": "image"}`` / ``{"type": "video"}`` parts (TRL's layout),
  the n-th tag or bare part taking the n-th item, in order across turns. A kind with no tag at
  all goes before the first user text (images, then videos: the LLaVA rule); any other count
  mismatch is a bad sample;
- inline: content parts that carry their reference (``{"type": "image", "image": REF}``,
  ``image_url``, ``{"type": "video", "video": ...}``, ``video_url``; see chat.py).

Media are only read in user turns. An ``<audio>`` tag or an audio part is a bad sample (Qwen3-VL
takes no audio), as is a sample with no non-empty assistant turn.
"""

from __future__ import annotations

import json
import re

from data.samples import Sample
from data.sources.media_refs import AUDIO_UNSUPPORTED, MediaRoots
from data.sources.objects import fill_objects

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
AUDIO_TAG = "<audio>"
NUMBERED_IMAGE_TAG = re.compile(r"<image (\d+)>")
VIDEO_OPTIONS = ("fps", "nframes", "num_frames", "sample_fps")  # qwen-vl-utils' per-video keys
AUDIO_PARTS = ("audio", "input_audio", "audio_url")
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


# --- Content parts ---------------------------------------------------------------------------

def _part_kind(part) -> str | None:
    """"image" / "video" for a media part, "slot:image" / "slot:video" for a bare one (it takes
    the next listed item), "audio", "text", or None for anything else."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in AUDIO_PARTS:
        return "audio"
    if kind == "text":
        return "text"
    if kind in ("image", "video") or (kind is None and "video" in part):
        media = kind or "video"
        return media if part.get(media) is not None else f"slot:{media}"
    if kind in ("image_url", "video_url"):
        return kind.split("_")[0]
    return None


def _slots(turns: list[dict], kind: str, tag: str) -> tuple[int, int]:
    """(tags in string contents, bare parts in part lists) of one media kind."""
    n_tags = sum(t["content"].count(tag) for t in turns if isinstance(t["content"], str))
    n_bare = sum(1 for t in turns if isinstance(t["content"], list)
                 for p in t["content"] if _part_kind(p) == f"slot:{kind}")
    return n_tags, n_bare


def _place_media(turns: list[dict], counts: list[tuple[str, str, int, str]], unit: str) -> list[dict]:
    """Check each kind's slot count against its media count. Repair rule (LLaVA convention):
    media with no slot of their kind at all go before the first user text."""
    missing: list[tuple[str, str, int]] = []
    for kind, tag, n_media, what in counts:
        n_tags, n_bare = _slots(turns, kind, tag)
        n_slots = n_tags + n_bare
        if n_slots == 0 and n_media:
            missing.append((kind, tag, n_media))
        elif n_slots != n_media:
            slots = f"{n_tags} {tag} tags" if not n_bare else f"{n_slots} {tag} tags / {kind} parts"
            raise ValueError(f"{slots} but {n_media} {what}")
    if not missing:
        return turns
    users = [i for i, t in enumerate(turns) if t["role"] == "user"]
    if not users:
        raise ValueError(f"no user {unit} to place the untagged images/videos in")
    turns = [dict(t) for t in turns]
    first = turns[users[0]]
    if isinstance(first["content"], str):
        first["content"] = "".join(tag * n for _, tag, n in missing) + "\n" + first["content"]
    else:
        first["content"] = [{"type": kind} for kind, _, n in missing for _ in range(n)] + \
            list(first["content"])
    return turns


def _content_parts(content: list, i: int, unit: str, roots: MediaRoots, images: list,
                   videos: list) -> list[dict]:
    """Our parts of a content list; media carrying a reference are resolved, checked and
    appended to ``images`` / ``videos``."""
    parts = []
    for part in content:
        kind = _part_kind(part)
        if kind in ("slot:image", "slot:video"):
            parts.append({"type": kind[5:]})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "video":
            value = part.get("video") if "video" in part else part.get("video_url")
            value = value.get("url") if isinstance(value, dict) else value
            try:
                videos.append(roots.video_ref(value, {k: part[k] for k in VIDEO_OPTIONS if k in part}))
            except ValueError as e:
                raise ValueError(f"{e} ({unit} {i})") from None
            parts.append({"type": "video"})
        elif kind == "image":
            value = part.get("image") if part.get("type") == "image" else part.get("image_url")
            value = value.get("url") if isinstance(value, dict) else value
            if not isinstance(value, str):
                raise ValueError(f"unreadable content part {json.dumps(part, default=str)[:80]} ({unit} {i})")
            images.append(roots.image_ref(value))
            parts.append({"type": "image"})
        elif kind == "audio":
            raise ValueError(f"unreadable content part {json.dumps(part, default=str)[:80]} ({unit} {i}): "
                             f"{AUDIO_UNSUPPORTED}")
        elif not isinstance(part, dict):
            raise ValueError(f"content part must be an object, got {part!r:.60} ({unit} {i})")
        else:
            raise ValueError(f"unreadable content part {json.dumps(part, default=str)[:80]} "
                             f"({unit} {i})")
    return parts


# --- Turns -> sample -------------------------------------------------------------------------

def chat_sample(turns: list[dict], images: list, videos: list, roots: MediaRoots, *,
                sample_id: str, index: int, source: str, meta: dict | None = None,
                video_options: dict | None = None, objects=None, objects_required: bool = False,
                unit: str = "turn") -> Sample:
    """A sample from ``turns`` (roles already ``system`` / ``user`` / ``assistant``) and the
    record's listed media (unresolved entries); ValueError saying why it cannot be one.
    ``objects``: ms-swift grounding objects for ``<ref-object>`` / ``<bbox>`` tags (objects.py).
    ``unit`` names a turn in reasons ("turn 2", "message 2")."""
    for i, t in enumerate(turns):
        if isinstance(t["content"], str) and AUDIO_TAG in t["content"]:
            raise ValueError(f"{AUDIO_UNSUPPORTED}: {unit} {i} has an {AUDIO_TAG} tag; leave the "
                             f"sample out or remove its audio")
    image_refs = [roots.image_ref(x) for x in images]
    video_refs = [roots.video_ref(v, video_options) for v in videos]
    turns = fill_objects(turns, objects, image_refs, required=objects_required)

    listed = bool(image_refs or video_refs) or any(
        sum(_slots(turns, kind, tag)) for kind, tag in (("image", IMAGE_TAG), ("video", VIDEO_TAG)))
    inline = any(_part_kind(p) in ("image", "video") for t in turns
                 if isinstance(t["content"], list) for p in t["content"])
    if listed and inline:
        raise ValueError("the record gives media both as content parts with a reference and as "
                         "'images' / 'videos' lists or <image> / <video> tags; use one or the other")
    turns = _place_media(turns, [("image", IMAGE_TAG, len(image_refs), "images"),
                                 ("video", VIDEO_TAG, len(video_refs), "videos")], unit)

    messages, part_images, part_videos = [], [], []
    for i, turn in enumerate(turns):
        role, content = turn["role"], turn["content"]
        kinds = ([p["type"] for p in tagged_parts(content)[0]] if isinstance(content, str)
                 else [(_part_kind(p) or "").removeprefix("slot:") for p in content])
        for kind in ("image", "video"):
            if role != "user" and kind in kinds:  # checked before any file is looked for
                raise ValueError(f"{kind}s are only read in user turns, not {role} ({unit} {i})")
        if isinstance(content, str):
            parts = tagged_parts(content)[0]
        else:
            parts = _content_parts(content, i, unit, roots, part_images, part_videos)
        message = {"role": role, "content": parts}
        if role == "assistant" and isinstance(turn.get("reasoning_content"), str):
            # Qwen / OpenAI-style reasoning: the Thinking template renders it in <think>;
            # the Instruct template has no reasoning and leaves it out.
            message["reasoning_content"] = turn["reasoning_content"]
        messages.append(message)
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise ValueError("no non-empty assistant turn to learn from")
    return Sample(id=sample_id, messages=messages, images=image_refs + part_images,
                  videos=video_refs + part_videos, source=source, index=index, meta=meta or {})


def text_value(value, where: str) -> str:
    """A turn's text: a string (numbers are written out); anything else is a ValueError."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where} must be a string, got {type(value).__name__}")


def system_turn(record: dict, key: str | None, turns: list[dict]) -> list[dict]:
    """``turns`` with the record's per-sample system prompt (``record[key]``) as a leading system
    turn, unless the conversation has its own (which wins, as in LLaMA-Factory)."""
    if not key or record.get(key) in (None, ""):
        return turns
    text = text_value(record[key], f"{key!r}")
    if any(t["role"] == "system" for t in turns):
        return turns
    return [{"role": "system", "content": text}] + turns
