"""The ShareGPT family (``format: sharegpt``; ``llava_json`` is the same reader): LLaVA,
Qwen-finetune and LLaMA-Factory's sharegpt layouts.

A JSON list (or JSONL, or one JSON object) of records with

- the conversation in ``conversations`` (or ``messages``): turns of ``from`` / ``value`` (LLaVA,
  ShareGPT) or ``role`` / ``content`` (LLaMA-Factory's OpenAI-style sharegpt, e.g. its
  ``mllm_demo``), contents being strings. Speakers: ``human`` / ``user`` -> user; ``gpt`` /
  ``assistant`` / ``bot`` / ``model`` / ``chatgpt`` -> assistant; ``system``. Tool turns
  (``function_call``, ``observation``, ``tool``, ...) and a ``tools`` field are reported as
  unsupported: the sample is bad, not trained without them;
- media: ``images`` (or LLaVA's ``image``: a path or a list) placed by ``<image>`` tags,
  ``videos`` (or ``video``: one entry per video, a path, a frame folder or a list of frame
  paths) by ``<video>`` tags; each tag takes the next item, in order across turns. Media without
  any tag of their kind go before the first user text (images, then videos); a tag count that
  differs from the media count is a bad sample. Per-record video keys: ``fps``, ``nframes`` /
  ``num_frames``, ``sample_fps`` (data/media/video.py). ``audios`` / ``<audio>``: bad sample
  (Qwen3-VL takes no audio);
- ms-swift's ``<ref-object>`` / ``<bbox>`` tags are filled from ``objects`` when the text has
  them (objects.py);
- ``system``: the sample's system prompt, a leading system turn (a system turn in the
  conversation wins, as in LLaMA-Factory); ``id``: the sample id (default: the record index).

``conversations`` whose contents are part lists are the OpenAI layout: ``format: messages``.
``llamafactory`` reads LLaMA-Factory's own column and tag names through ``ShareGPTSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data.samples import Sample
from data.sources.json_source import json_reader
from data.sources.layouts import wrong_layout
from data.sources.media_refs import MediaRoots, record_media
from data.sources.objects import has_object_tags
from data.sources.turns import VIDEO_OPTIONS, chat_sample, system_turn, text_value

SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "bot": "assistant", "model": "assistant", "chatgpt": "assistant", "system": "system"}
TOOL_SPEAKERS = ("function_call", "function", "observation", "tool", "tool_call", "tool_calls",
                 "tool_response", "ipython")
TOOL = "tool"


@dataclass(frozen=True)
class ShareGPTSpec:
    """Where a record keeps its parts. The defaults read every ShareGPT variant; LLaMA-Factory's
    ``dataset_info.json`` columns and tags give exact names (``speakers`` then maps tag values
    to roles, ``TOOL`` for observation / function turns, and nothing else is accepted)."""

    conversation: tuple[str, ...] = ("conversations", "messages")
    role_key: str | None = None  # None: "from" or "role", whichever the turn has
    content_key: str | None = None  # None: "value" or "content"
    speakers: dict[str, str] = field(default_factory=dict)  # empty: SPEAKERS + TOOL_SPEAKERS
    system: str | None = "system"
    tools: str | None = "tools"
    images: tuple[str, ...] = ("images", "image")
    videos: tuple[str, ...] = ("videos", "video")
    audios: tuple[str, ...] = ("audios", "audio")
    fmt: str = "sharegpt"  # the format name reasons use

    def consumed(self) -> set[str]:
        keys = set(self.conversation) | set(self.images) | set(self.videos) | set(self.audios)
        return keys | {k for k in (self.system, self.tools) if k}

    def role(self, speaker) -> str | None:
        if self.speakers:
            return self.speakers.get(speaker) if isinstance(speaker, str) else None
        if speaker in TOOL_SPEAKERS:
            return TOOL
        return SPEAKERS.get(speaker) if isinstance(speaker, str) else None

    def expected(self) -> str:
        if self.speakers:
            return ", ".join(f"{tag!r}" for tag in self.speakers)
        return "human/user, gpt/assistant or system"


DEFAULT = ShareGPTSpec()
LLAVA = ShareGPTSpec(conversation=("conversations",), images=("image",), videos=("video",),
                     audios=(), system=None, tools=None, fmt="llava_json")


def normalize_turns(turns, spec: ShareGPTSpec) -> list[dict]:
    """ShareGPT turns as ``{"role", "content"}`` with our role names; ValueError naming the turn
    that cannot be one."""
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is not an object (got {type(turn).__name__})")
        role_key = spec.role_key or ("from" if "from" in turn else "role")
        content_key = spec.content_key or ("value" if "value" in turn else "content")
        if role_key not in turn:
            hint = " (the dataset_info entry's tags.role_tag)" if spec.role_key else ""
            raise ValueError(f"turn {i} has no {role_key!r} key{hint}; its keys: "
                             f"{', '.join(map(repr, turn)) or 'none'}")
        speaker = turn[role_key]
        role = spec.role(speaker)
        if role == TOOL:
            raise ValueError(f"turn {i} is a {speaker!r} turn: tool / function-calling turns are "
                             f"not supported; leave the sample out or drop its tool turns")
        if role is None:
            raise ValueError(f"unknown speaker {speaker!r} (turn {i}); expected {spec.expected()}")
        content = turn.get(content_key)
        if isinstance(content, list):
            raise ValueError(f"turn {i}: {content_key!r} is a list of content parts (the OpenAI "
                             f"layout): set format: messages")
        if content is None:
            raise ValueError(f"turn {i} has no {content_key!r} text")
        out.append({"role": role, "content": text_value(content, f"turn {i}: {content_key!r}")})
    return out


def check_no_tools(record: dict, key: str | None) -> None:
    if key and record.get(key) not in (None, "", [], "[]"):
        raise ValueError(f"the record has {key!r} (function calling), which is not supported: "
                         f"the tool definitions would be left out of the prompt; leave the "
                         f"sample out or remove them")


def sharegpt_to_sample(record: dict, index: int, roots: MediaRoots, source: str,
                       spec: ShareGPTSpec = DEFAULT) -> Sample:
    """A ShareGPT-family record (see the module doc) as a sample."""
    key = next((k for k in spec.conversation if k in record), None)
    if key is None:
        raise ValueError(wrong_layout(record, index, spec.fmt,
                                      " or ".join(f"{k!r}" for k in spec.conversation) + " list"))
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"no {key!r} list")
    images, videos = record_media(record, spec.images, spec.videos, spec.audios)
    check_no_tools(record, spec.tools)
    turns = system_turn(record, spec.system, normalize_turns(turns, spec))
    return chat_sample(turns, images, videos, roots, sample_id=str(record.get("id", index)),
                       index=index, source=source,
                       meta={k: v for k, v in record.items() if k not in spec.consumed()},
                       video_options={k: record[k] for k in VIDEO_OPTIONS if k in record},
                       objects=record.get("objects") if has_object_tags(turns) else None)


read_sharegpt = json_reader(sharegpt_to_sample)
