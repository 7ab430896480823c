"""A checkpoint's content fingerprint: what its predictions depend on besides the eval settings.

The prediction cache and every results row are keyed on this, not on the checkpoint's path:
retraining into the same folder, or replacing an adapter in place, must make the next eval
generate again instead of reporting the old weights' predictions under the new weights' name
(and ``--expect-ahead`` passing on a model it never saw).

For each local folder the checkpoint loads from (the model, the adapter, and the processor's
prompt files) it describes:

- ``*.safetensors``: size, a hash of the JSON header (every tensor's name, dtype, shape and
  offsets) and a hash of the bytes: all of them below ``LARGE_FILE``, else a sample (first,
  middle and last ``BLOCK`` plus the first ``TENSOR_SAMPLE`` bytes of every tensor). The
  per-tensor sample is there because a fine-tune that froze part of the model leaves whole
  stretches of a shard unchanged: three fixed blocks could all land in frozen tensors, while
  every trained tensor changes from its first bytes;
- ``*.bin``, ``*.pt``, ``*.pth`` (pickled weights, no readable header): size and a hash of all
  bytes; training state saved beside weights by some trainers (``optimizer.pt``,
  ``rng_state.pth``, ``training_args.bin``, ...) does not change predictions and can be twice
  the model's size, so it is left out;
- config and prompt files (``config.json``, ``adapter_config.json``, the chat template, ...):
  a hash of their contents.

A hub id has no local files to read: it is described by its id and the revision the local hub
cache resolved it to (the commit its files were downloaded at). Computed once per checkpoint
per eval run; reading a few MiB per large shard keeps that to seconds for an 8B model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

LARGE_FILE = 64 * 2**20  # bytes; larger weight files are sampled, smaller ones read whole
BLOCK = 2**20  # bytes read at the start, middle and end of a sampled file
TENSOR_SAMPLE = 4096  # bytes read at the start of each tensor of a sampled file
PICKLED_WEIGHTS = (".bin", ".pt", ".pth")
TRAINING_STATE = ("optimizer", "scheduler", "trainer_state", "rng_", "training_args")  # name prefixes
CONFIG_FILES = ("config.json", "adapter_config.json", "generation_config.json")
PROMPT_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json", "tokenizer.json",
                "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                "special_tokens_map.json")


def checkpoint_fingerprint(resolved) -> str:
    """16 hex characters naming the content of a resolved checkpoint (``eval.checkpoints``):
    the model's and adapter's weights and configs, and the processor's prompt files."""
    parts = {"model": describe(resolved.model)}
    if resolved.adapter:
        parts["adapter"] = describe(resolved.adapter)
    if resolved.processor not in (resolved.model, resolved.adapter):
        parts["processor"] = describe(resolved.processor, weights=False)
    return _digest(json.dumps(parts, sort_keys=True).encode())[:16]


def describe(where: str, weights: bool = True) -> dict:
    """What identifies one folder's content (see the module docstring), or a hub id's revision.
    ``weights=False``: only its prompt files (the processor's folder: a base model or run
    folder whose weights and config.json are not the ones evaluated)."""
    folder = Path(where).expanduser()
    if not folder.is_dir():
        return {"hub": where, "revision": hub_revision(where)}
    names = CONFIG_FILES + PROMPT_FILES if weights else PROMPT_FILES
    files = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if weights and path.suffix == ".safetensors":
            files[path.name] = describe_safetensors(path)
        elif weights and path.suffix in PICKLED_WEIGHTS and not path.name.startswith(TRAINING_STATE):
            files[path.name] = {"size": path.stat().st_size, "content": hash_file(path)}
        elif path.name in names:
            files[path.name] = {"content": hash_file(path)}
    return {"files": files}


def hub_revision(repo_id: str) -> str:
    """The commit the hub cache holds ``repo_id``'s config at (the checkpoint loader has
    fetched it by the time the fingerprint is taken), or "unresolved" when it holds none."""
    cached = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(cached, str):
        return "unresolved"
    return Path(cached).parent.name  # .../snapshots/<commit>/config.json


def describe_safetensors(path: Path) -> dict:
    """Size, header hash and a content hash (whole, or sampled above ``LARGE_FILE``)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = read_header(f, size)
        if size < LARGE_FILE:
            f.seek(0)
            content = _digest_stream(f)
        else:
            content = _digest(b"".join(_read(f, start, length)
                                       for start, length in sample_spans(header, size)))
    return {"size": size, "header": _digest(header), "content": content}


def read_header(f, size: int) -> bytes:
    """The JSON header of an open safetensors file: its first 8 bytes give the length (little
    endian). b"" for a file too short or with a length past its end (it is then hashed as
    opaque bytes)."""
    prefix = f.read(8)
    if len(prefix) < 8:
        return b""
    (length,) = struct.unpack("<Q", prefix)
    return f.read(length) if 8 + length <= size else b""


def sample_spans(header: bytes, size: int) -> list[tuple[int, int]]:
    """(start, length) of what a large file's content hash reads: three fixed blocks, and the
    start of every tensor the header lists (offsets count from the end of the header)."""
    spans = [(0, BLOCK), (max(0, size // 2 - BLOCK // 2), BLOCK), (max(0, size - BLOCK), BLOCK)]
    try:
        tensors = json.loads(header) if header else {}
    except ValueError:
        tensors = {}
    data_start = 8 + len(header)
    for name, info in sorted(tensors.items()):
        offsets = info.get("data_offsets") if isinstance(info, dict) and name != "__metadata__" else None
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
            spans.append((data_start + offsets[0], min(TENSOR_SAMPLE, max(0, offsets[1] - offsets[0]))))
    return spans


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _digest_stream(f)


def _read(f, start: int, length: int) -> bytes:
    f.seek(start)
    return f.read(length)


def _digest_stream(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(8 * 2**20), b""):
        h.update(chunk)
    return h.hexdigest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
