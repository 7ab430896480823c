"""Preference data readers: each published layout -> ``PreferencePair``s (data/preference.py).

Every layout is read by turning one record into two SFT records of a layout the chat readers
already read (the prompt + the chosen reply, the prompt + the rejected reply) and handing both to
that reader's converter, so media tags, placement, roots and every check are the SFT ones
(turns.py). The two samples must then be one prompt with two different replies
(``pair_from_samples``). A record that is not a pair is a ``BadSample`` naming the file, record
and reason (missing reply, same reply twice, media count mismatch...): never dropped silently.

Formats (the ``format`` of a source config, read here instead of ``data.sources.FORMATS``):

- ``sharegpt`` / ``llava_json``: LLaMA-Factory's sharegpt preference records: ``conversations``
  (the prompt turns, ``from`` / ``value`` or ``role`` / ``content``) + ``chosen`` and
  ``rejected`` turn objects (``{"from": "gpt", "value": ...}``), ``images`` / ``videos``;
- ``llamafactory``: a ``dataset_info.json`` entry with ``"ranking": true``; ``formatting``
  sharegpt (``columns`` ``messages`` / ``chosen`` / ``rejected``, ``tags``) or alpaca
  (``prompt`` / ``query`` columns + ``chosen`` / ``rejected`` strings);
- ``swift``: ms-swift RLHF rows: ``messages`` ending with the chosen assistant turn +
  ``rejected_response`` (a string), or ``rejected_messages`` (ms-swift >= 3.8: the whole
  rejected conversation, its prompt the same); ``images`` / ``videos``. ``rejected_images``
  (other media for the rejected side) is refused unless equal to ``images``: a pair shares one
  prompt;
- ``messages``: our JSONL, ``messages`` (the prompt, ending with a user turn) + ``chosen`` +
  ``rejected`` (each a string, an assistant message, or a one-message list), ``images`` /
  ``videos``; and TRL's preference layout, ``prompt`` (a string or a message list) + ``chosen`` +
  ``rejected`` (strings or message lists; TRL's implicit-prompt form without ``prompt``, where
  both are whole conversations, too) + ``images``, with bare ``{"type": "image"}`` parts.
"""

from __future__ import annotations

import copy
from pathlib import Path

from data.config import SourceConfig
from data.preference import PreferencePair, pair_from_samples
from data.samples import BadSample, BadSampleLog, DataError
from data.sources import llamafactory as lf
from data.sources.chat import messages_to_sample
from data.sources.json_source import SAFETY_NET
from data.sources.media_refs import MediaRoots
from data.sources.records import iter_records, record_id
from data.sources.sharegpt import sharegpt_to_sample
from data.sources.swift import swift_to_sample

MISSING = (None, "", [], {})


def _require(record: dict, *keys: str) -> None:
    for key in keys:
        if record.get(key) in MISSING:
            raise ValueError(f"missing {key!r} (a preference record needs a chosen and a "
                             f"rejected reply)")


def _without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


# --- record -> (chosen record, rejected record) in an SFT layout ---------------------------

def sharegpt_records(record: dict, conversation: str = "conversations", chosen: str = "chosen",
                     rejected: str = "rejected") -> tuple[dict, dict]:
    """LLaMA-Factory sharegpt: the prompt turns + each reply turn object."""
    key = conversation
    if key not in record and key == "conversations" and "messages" in record:
        key = "messages"  # LLaMA-Factory's OpenAI-style sharegpt files
    _require(record, chosen, rejected)
    turns = record.get(key)
    if not isinstance(turns, list):
        raise ValueError(f"no {key!r} list (the prompt turns)")
    for name in (chosen, rejected):
        if not isinstance(record[name], dict):
            raise ValueError(f"{name!r} must be a turn object like {{\"from\": \"gpt\", "
                             f"\"value\": ...}}, got {type(record[name]).__name__}")
    base = _without(record, chosen, rejected)
    return ({**base, key: turns + [record[chosen]]}, {**base, key: turns + [record[rejected]]})


def swift_records(record: dict) -> tuple[dict, dict]:
    """ms-swift RLHF: ``messages`` (ending with the chosen reply) + ``rejected_response`` or
    ``rejected_messages``."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("no 'messages' list")
    other = [k for k in ("rejected_images", "rejected_videos") if record.get(k) not in MISSING]
    for key in other:
        if record[key] != record.get(key.removeprefix("rejected_")):
            raise ValueError(f"{key!r} differs from {key.removeprefix('rejected_')!r}: pairs "
                             f"with other media for the rejected side are not supported (a "
                             f"pair shares one prompt and its media)")
    base = _without(record, "rejected_response", "rejected_messages", "rejected_images",
                    "rejected_videos")
    if record.get("rejected_messages") not in MISSING:
        if not isinstance(record["rejected_messages"], list):
            raise ValueError("'rejected_messages' must be a list of messages")
        return base, {**base, "messages": record["rejected_messages"]}
    if record.get("rejected_response") in MISSING:
        raise ValueError("missing 'rejected_response' (or 'rejected_messages'): a preference "
                         "row needs a rejected reply")
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise ValueError("'messages' must end with the chosen assistant reply")
    rejected = {"role": "assistant", "content": record["rejected_response"]}
    return base, {**base, "messages": messages[:-1] + [rejected]}


def _reply_turns(value, name: str) -> list[dict]:
    """A reply given as a string, an assistant message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return value
    raise ValueError(f"{name!r} must be a string, a message or a list of messages, got "
                     f"{type(value).__name__}")


def messages_records(record: dict) -> tuple[dict, dict]:
    """Ours (``messages`` + ``chosen`` + ``rejected``) or TRL's (``prompt`` + ``chosen`` +
    ``rejected``; implicit prompt: no ``prompt``)."""
    _require(record, "chosen", "rejected")
    chosen = _reply_turns(record["chosen"], "chosen")
    rejected = _reply_turns(record["rejected"], "rejected")
    base = _without(record, "prompt", "chosen", "rejected", "messages")
    if "messages" in record and "prompt" in record:
        raise ValueError("the record has both 'messages' and 'prompt'; give the prompt in one")
    prompt = record.get("messages", record.get("prompt"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif prompt is None:  # TRL implicit prompt: two whole conversations
        if len(chosen) < 2 or len(rejected) < 2:
            raise ValueError("no 'prompt' / 'messages', and 'chosen' / 'rejected' are not whole "
                             "conversations (TRL's implicit-prompt form)")
        if rejected[:-1] != chosen[:-1]:
            raise ValueError("the chosen and rejected conversations have different prompts")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    elif not isinstance(prompt, list):
        raise ValueError(f"the prompt must be a string or a list of messages, got "
                         f"{type(prompt).__name__}")
    return {**base, "messages": prompt + chosen}, {**base, "messages": prompt + rejected}


# --- readers ---------------------------------------------------------------------------------

def read_pairs_file(path: Path, roots: MediaRoots, bad: BadSampleLog, split, convert,
                    ) -> list[PreferencePair]:
    """The pairs of one JSON / JSONL file: ``split(record) -> (chosen record, rejected record)``,
    each converted by ``convert(record, index, roots, source) -> Sample``."""
    pairs = []
    for index, record in iter_records(path, bad):
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, got {type(record).__name__}")
            chosen, rejected = split(copy.deepcopy(record))
            pairs.append(pair_from_samples(convert(chosen, index, roots, str(path)),
                                           convert(rejected, index, roots, str(path))))
        except ValueError as e:
            bad.add(BadSample(str(path), index, record_id(record, index), str(e)))
        except SAFETY_NET as e:
            bad.add(BadSample(str(path), index, None,
                              f"unreadable record {index} ({type(e).__name__}: {e})"))
    return pairs


def _json_reader(split, convert):
    def read(cfg: SourceConfig, bad: BadSampleLog) -> list[PreferencePair]:
        path = Path(cfg.path)
        return read_pairs_file(path, MediaRoots.for_source(cfg, path.parent), bad, split, convert)
    return read


def read_llamafactory(cfg: SourceConfig, bad: BadSampleLog) -> list[PreferencePair]:
    """A ``dataset_info.json`` entry with ``"ranking": true`` (see the module doc)."""
    info_path, info = lf._dataset_info(Path(cfg.path))
    name = cfg.subset if cfg.subset is not None or len(info) != 1 else next(iter(info))
    if name not in info:
        lf._entry(info, name, info_path)  # raises, naming the datasets the file lists
    entry = info[name]
    if not entry.get("ranking"):
        raise DataError(f"{info_path}: dataset {name!r} is not a ranking (preference) dataset; "
                        f"read it as SFT data, or set \"ranking\": true if it holds chosen / "
                        f"rejected replies")
    columns = dict(entry.get("columns") or {})
    if "kto_tag" in columns:
        raise DataError(f"{info_path}: dataset {name!r} maps 'kto_tag' (KTO: one reply labelled "
                        f"good or bad), not chosen / rejected pairs")
    keys = {"chosen": columns.pop("chosen", "chosen"), "rejected": columns.pop("rejected", "rejected")}
    # The entry as an SFT entry (no ranking, no preference columns): validated and converted by
    # the SFT reader's own code.
    sft_entry = {**{k: v for k, v in entry.items() if k != "ranking"}, "columns": columns}
    name, sft_entry = lf._entry({name: sft_entry}, name, info_path)
    convert = lf._converter(sft_entry, name)
    if sft_entry.get("formatting", "alpaca") == "sharegpt":
        def split(record):
            return sharegpt_records(record, columns.get("messages", "conversations"),
                                    keys["chosen"], keys["rejected"])
    else:
        response = columns.get("response", "output")

        def split(record):
            _require(record, keys["chosen"], keys["rejected"])
            base = _without(record, keys["chosen"], keys["rejected"])
            return ({**base, response: record[keys["chosen"]]},
                    {**base, response: record[keys["rejected"]]})
    roots = MediaRoots.for_source(cfg, info_path.parent)
    pairs = []
    for path in lf._data_files(sft_entry, info_path.parent, f"{info_path}: dataset {name!r}"):
        pairs += read_pairs_file(path, roots, bad, split, convert)
    n = sft_entry.get("num_samples")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        pairs = pairs[:n]
    return pairs


def _sharegpt_convert(record, index, roots, source):
    return sharegpt_to_sample(record, index, roots, source)


PREFERENCE_FORMATS = {
    "sharegpt": _json_reader(sharegpt_records, _sharegpt_convert),
    "llava_json": _json_reader(sharegpt_records, _sharegpt_convert),
    "llamafactory": read_llamafactory,
    "swift": _json_reader(swift_records, swift_to_sample),
    "messages": _json_reader(messages_records, messages_to_sample),
}


def load_pairs(cfg: SourceConfig, bad: BadSampleLog | None = None) -> list[PreferencePair]:
    """Read one configured preference source (as ``data.sources.load`` reads SFT sources: bad
    records to ``bad`` named with the source, ``max_samples``, ``system_prompt``)."""
    if cfg.format not in PREFERENCE_FORMATS:
        raise DataError(f"source {cfg.path}: format {cfg.format!r} has no preference reader; "
                        f"preference formats: {', '.join(sorted(PREFERENCE_FORMATS))}")
    from data.sources import read_source

    return read_source(PREFERENCE_FORMATS, cfg, bad, lambda pair: pair.prompt)
