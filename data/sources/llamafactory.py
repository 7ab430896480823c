"""LLaMA-Factory's ``dataset_info.json`` as a source (``format: llamafactory``).

``path`` is a ``dataset_info.json`` (or the folder holding one); ``subset`` names the dataset
(it may be left out when the file has one entry). An entry, as LLaMA-Factory documents it::

    "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                  "columns": {"messages": "messages", "images": "images"},
                  "tags": {"role_tag": "role", "content_tag": "content",
                           "user_tag": "user", "assistant_tag": "assistant"}}

- ``file_name``: a ``.json`` / ``.jsonl`` file, or a folder of them, relative to the
  dataset_info folder (an entry that also names a hub is read from this local file, where
  LLaMA-Factory would load the hub's copy);
- ``formatting``: ``alpaca`` (default; alpaca.py) or ``sharegpt`` (sharegpt.py);
- ``columns``: record keys per role, LLaMA-Factory's defaults where left out (alpaca:
  ``prompt`` instruction, ``query`` input, ``response`` output; sharegpt: ``messages``
  conversations); ``history``, ``system``, ``tools``, ``images``, ``videos``, ``audios`` are
  read only when mapped, as there. A record holding ``images`` / ``videos`` that the entry
  does not map is a bad sample that says which column to add (never trained without them);
- ``tags`` (sharegpt): ``role_tag`` (default from), ``content_tag`` (value), ``user_tag``
  (human), ``assistant_tag`` (gpt), ``system_tag`` (system), ``observation_tag``
  (observation), ``function_tag`` (function_call); exactly these speakers are accepted, and
  observation / function turns are reported as unsupported (tool use);
- ``num_samples``: the first N samples (LLaMA-Factory draws N at random).

Relative media paths resolve against ``image_root`` / ``video_root``, default the dataset_info
folder (LLaMA-Factory's ``media_dir`` default). Entries this reader cannot read stop with a
DataError saying what to do: hub entries (``hf_hub_url``, ``ms_hub_url``, ``om_hub_url``,
``script_url``, ``cloud_file_name`` without ``file_name``), ``ranking`` (preference) and KTO
datasets, other formattings, non-JSON data files.
"""

from __future__ import annotations

import json
from pathlib import Path

from data.config import SourceConfig
from data.samples import BadSampleLog, DataError, Sample
from data.sources.alpaca import alpaca_to_sample
from data.sources.json_source import read_file
from data.sources.layouts import HUB_KEYS
from data.sources.media_refs import AUDIO_UNSUPPORTED, MediaRoots
from data.sources.sharegpt import TOOL, ShareGPTSpec, sharegpt_to_sample

COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images",
               "videos", "audios", "chosen", "rejected", "kto_tag")
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
ENTRY_KEYS = ("file_name", "formatting", "ranking", "subset", "split", "folder", "num_samples",
              "columns", "tags", "load_from") + HUB_KEYS
MEDIA = {"images": ("images", "image"), "videos": ("videos", "video")}


def _dataset_info(path: Path) -> tuple[Path, dict]:
    info_path = path / "dataset_info.json" if path.is_dir() else path
    if not info_path.is_file():
        raise DataError(f"{info_path}: dataset_info.json not found (format llamafactory reads "
                        f"LLaMA-Factory's dataset_info.json or its folder)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{info_path}: not a valid JSON file ({e})") from None
    if not isinstance(info, dict) or not info or not all(isinstance(v, dict) for v in info.values()):
        raise DataError(f"{info_path}: expected LLaMA-Factory's dataset_info layout, an object of "
                        f"dataset name -> entry object")
    return info_path, info


def _entry(info: dict, name: str | None, info_path: Path) -> tuple[str, dict]:
    names = ", ".join(sorted(info))
    if name is None:
        if len(info) != 1:
            raise DataError(f"{info_path} lists {len(info)} datasets ({names}); name one with "
                            f"the source's subset")
        name = next(iter(info))
    if name not in info:
        raise DataError(f"{info_path}: no dataset {name!r}; it lists {names}")
    entry = info[name]
    where = f"{info_path}: dataset {name!r}"
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r}; LLaMA-Factory's keys: "
                        f"{', '.join(ENTRY_KEYS)}")
    if "file_name" not in entry:
        hub = next((k for k in HUB_KEYS if k in entry), None)
        if hub is None:
            raise DataError(f"{where} has no file_name")
        hint = (f"or read it with format: hf_dataset (path: {entry[hub]})"
                if hub == "hf_hub_url" else "")
        raise DataError(f"{where} is loaded from elsewhere ({hub}: {entry[hub]}), which format "
                        f"llamafactory does not do: download the data, give the entry a "
                        f"file_name {hint}".rstrip())
    if entry.get("ranking"):
        raise DataError(f"{where} is a ranking (preference) dataset, which is not supported: "
                        f"this fine-tuning trains on SFT data (one answer per prompt)")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise DataError(f"{where}: columns and tags must be objects")
    for key, known, what in ((columns, COLUMN_KEYS, "column"), (tags, TAGS, "tag")):
        unknown = sorted(set(key) - set(known))
        if unknown:
            raise DataError(f"{where}: unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    preference = [k for k in ("chosen", "rejected", "kto_tag") if k in columns]
    if preference:
        raise DataError(f"{where} maps {preference[0]!r} (preference / KTO data), which is not "
                        f"supported: this fine-tuning trains on SFT data")
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
        raise DataError(f"{where}: formatting {entry['formatting']!r} is not supported; "
                        f"LLaMA-Factory's are alpaca and sharegpt")
    return name, entry


def _data_files(entry: dict, folder: Path, where: str) -> list[Path]:
    path = folder / str(entry["file_name"])
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise DataError(f"{where}: folder {path} holds no .json / .jsonl files")
        return files
    if not path.is_file():
        raise DataError(f"{where}: data file {path} not found (file_name is relative to the "
                        f"dataset_info.json folder)")
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"{where}: {path} is a {path.suffix or 'suffix-less'} file; format "
                        f"llamafactory reads .json / .jsonl files: read it with format: "
                        f"hf_dataset (path: {path})")
    return [path]


def _converter(entry: dict, name: str):
    columns = entry.get("columns") or {}
    media = {role: columns.get(role) for role in ("images", "videos", "audios")}

    def check_unmapped(record: dict) -> None:
        for key in dict.fromkeys(k for k in (media["audios"], "audios", "audio") if k):
            if record.get(key) not in (None, [], ""):
                raise ValueError(f"{AUDIO_UNSUPPORTED} (the record has {key!r}); leave the sample "
                                 f"out or remove its audio and <audio> tags")
        for role, keys in MEDIA.items():
            if media[role]:
                continue
            key = next((k for k in keys if record.get(k) not in (None, [], "")), None)
            if key is not None:
                raise ValueError(f"the record has {key!r} but dataset_info entry {name!r} maps "
                                 f"no {role} column: add \"{role}\": \"{key}\" to its columns")

    if entry.get("formatting", "alpaca") == "sharegpt":
        tags = {**TAGS, **(entry.get("tags") or {})}
        spec = ShareGPTSpec(
            conversation=(columns.get("messages", "conversations"),),
            role_key=tags["role_tag"], content_key=tags["content_tag"],
            speakers={tags["user_tag"]: "user", tags["assistant_tag"]: "assistant",
                      tags["system_tag"]: "system", tags["observation_tag"]: TOOL,
                      tags["function_tag"]: TOOL},
            system=columns.get("system"), tools=columns.get("tools"),
            images=tuple(k for k in [media["images"]] if k),
            videos=tuple(k for k in [media["videos"]] if k), audios=(), fmt="llamafactory")

        def convert(record, index, roots, source) -> Sample:
            check_unmapped(record)
            return sharegpt_to_sample(record, index, roots, source, spec)
    else:
        alpaca = {"prompt": columns.get("prompt", "instruction"),
                  "query": columns.get("query", "input"),
                  "response": columns.get("response", "output"),
                  **{k: columns.get(k) for k in ("history", "system", "tools", "images", "videos",
                                                 "audios")}}

        def convert(record, index, roots, source) -> Sample:
            check_unmapped(record)
            return alpaca_to_sample(record, index, roots, source, alpaca)
    return convert


def read_llamafactory(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    info_path, info = _dataset_info(Path(cfg.path))
    name, entry = _entry(info, cfg.subset, info_path)
    files = _data_files(entry, info_path.parent, f"{info_path}: dataset {name!r}")
    convert = _converter(entry, name)
    roots = MediaRoots.for_source(cfg, info_path.parent)
    samples = []
    for path in files:
        samples += read_file(path, roots, bad, convert)
    n = entry.get("num_samples")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        samples = samples[:n]
    return samples
