"""A prepared cache: every sample of a data config encoded once into a ``datasets`` Arrow
dataset (written by ``python -m data prepare``, ``data/tools/prepare.py``), and read back here
as a training corpus (``data.prepared: DIR`` in a training config).

The folder holds:

- ``dataset/``: ``Dataset.save_to_disk`` with one row per encoded sample: ``input_ids``,
  ``attention_mask``, ``mm_token_type_ids``, ``labels``, ``pixel_values`` / ``image_grid_thw``
  (and the video pair), ``fields`` (which of those the sample has), ``length`` (tokens),
  ``id``, ``source`` (the source's name), ``file`` and ``index`` (record in the source file).
  Rows come source by source, in config order;
- ``bad_samples.jsonl``: samples that could not be read, planned, fitted to the budget
  (``stage: read``) or encoded (``stage: encode``), in the schema of ``data.samples``;
- ``manifest.json``: the data config, the processor path and a hash of its files, a stamp of
  each source file, and counts. ``stale_reasons`` compares it with a config, so a cache built
  from other data, budgets or tokenizer is refused (media files themselves are not hashed).

``PreparedDataset`` reads rows back into exactly the dicts ``SampleEncoder.encode`` returns
(torch tensors of the same dtypes), and offers the corpus surface the trainer uses
(``encode``, ``lengths``, ``mixture``...), so a prepared cache stands in for encoding.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from data.config import DataConfig, SourceConfig
from data.mixture import Mixture
from data.samples import BadSample, DataError

FORMAT_VERSION = 2
SEQUENCE_FIELDS = ("input_ids", "attention_mask", "mm_token_type_ids", "labels")
VISUAL_FIELDS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
META_COLUMNS = ("id", "source", "file", "index")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
MODEL_ONLY_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
# Data keys that do not change what is encoded (how batches are formed, how bad samples are
# treated, where the cache is): a cache built under other values of these is still valid.
BATCHING_KEYS = ("prepared", "packing", "pack_tokens", "group_by_length", "on_bad_sample",
                 "max_bad_fraction", "num_workers")


class StaleCacheError(DataError):
    """A prepared cache that does not match the config or processor it is used with."""


def features(processor):
    """The Arrow schema: token sequences, visual tensors (rows x patch width) and metadata."""
    from datasets import Array2D, Features, Sequence, Value

    def patch_width(part) -> int:
        return 3 * part.temporal_patch_size * part.patch_size ** 2

    columns = {name: Value("string") for name in ("id", "source", "file")}
    columns.update(index=Value("int64"), length=Value("int64"), fields=Sequence(Value("string")))
    columns.update({name: Sequence(Value("int64")) for name in SEQUENCE_FIELDS})
    columns["pixel_values"] = Array2D((None, patch_width(processor.image_processor)), "float32")
    columns["image_grid_thw"] = Array2D((None, 3), "int64")
    columns["pixel_values_videos"] = Array2D((None, patch_width(processor.video_processor)), "float32")
    columns["video_grid_thw"] = Array2D((None, 3), "int64")
    return Features(columns)


# --- Staleness -------------------------------------------------------------------------------

def encoding_config(cfg: DataConfig) -> dict:
    """The part of a data config that decides what is encoded."""
    from data.configio import to_dict

    config = json.loads(json.dumps(to_dict(cfg)))
    return {k: v for k, v in config.items() if k not in BATCHING_KEYS}


def processor_fingerprint(processor_path: str) -> dict[str, str]:
    """sha256 of the processor's files (tokenizer, templates, image/video processor configs);
    weights and the model-only config are left out."""
    folder = Path(processor_path)
    if not folder.is_dir():
        return {}
    digests = {}
    for path in sorted(folder.iterdir()):
        if (path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES)
                and path.name not in MODEL_ONLY_FILES):
            digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def source_stamp(source: SourceConfig) -> dict:
    """Size and mtime of a source's file (or of each file directly in its folder)."""
    path = Path(source.path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) \
        if path.is_dir() else []
    return {"name": source.name, "path": source.path, "format": source.format,
            "files": {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def stale_reasons(out_dir: str | Path, cfg: DataConfig, processor_path: str) -> list[str]:
    """Why the cache in ``out_dir`` does not match ``cfg`` and the processor (empty: it does)."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return [f"{path} not found: run python -m data prepare first"]
    manifest = json.loads(path.read_text())
    reasons = []
    if manifest.get("format_version") != FORMAT_VERSION:
        return [f"cache format {manifest.get('format_version')} != {FORMAT_VERSION}"]
    config, built = encoding_config(cfg), manifest["config"]
    changed = sorted(k for k in set(config) | set(built) if config.get(k) != built.get(k))
    if changed:
        reasons.append(f"data config differs in: {', '.join(changed)}")
    if os.path.abspath(processor_path) != manifest["processor"]:
        reasons.append(f"processor {os.path.abspath(processor_path)} != {manifest['processor']}")
    elif processor_fingerprint(processor_path) != manifest["processor_files"]:
        reasons.append(f"processor files in {processor_path} changed since the cache was built")
    stamps = {s["name"]: s for s in manifest["sources"]}
    for source in cfg.source_configs():
        if stamps.get(source.name, {}).get("files") != source_stamp(source)["files"]:
            reasons.append(f"source {source.name} ({source.path}) changed since the cache was built")
    return reasons


# --- Reading ---------------------------------------------------------------------------------

class PreparedDataset(torch.utils.data.Dataset):
    """A prepared cache read back: item ``i`` is the dict ``SampleEncoder.encode`` returned for
    that sample. Given ``cfg`` and ``processor_path``, a stale cache raises ``StaleCacheError``;
    then it also serves as the trainer's corpus (sources, sizes, lengths, mixture)."""

    def __init__(self, out_dir: str | Path, cfg: DataConfig | None = None,
                 processor_path: str | None = None):
        import datasets

        self.out_dir = Path(out_dir)
        if cfg is not None and processor_path is not None:
            reasons = stale_reasons(out_dir, cfg, processor_path)
            if reasons:
                raise StaleCacheError(f"prepared data in {out_dir} is stale: {'; '.join(reasons)}. "
                                      "Run python -m data prepare again.")
        self.dataset = datasets.load_from_disk(str(self.out_dir / "dataset")).with_format("numpy")
        self.sources = cfg.source_configs() if cfg is not None else []
        self._names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.dataset[int(i)]
        return {name: torch.from_numpy(np.ascontiguousarray(row[name])) for name in row["fields"]}

    def info(self, i: int) -> dict:
        """Where item ``i`` came from: sample id, source name, file and record index."""
        row = self.dataset.select_columns(list(META_COLUMNS))[int(i)]
        return {"id": str(row["id"]), "source": str(row["source"]), "file": str(row["file"]),
                "index": int(row["index"])}

    # The corpus surface (data.corpus.Corpus) the trainer reads.
    def encode(self, i: int) -> dict:
        return self[i]

    def sample_id(self, i: int) -> str:
        return self.info(i)["id"]

    def bad_record(self, i: int, reason: str) -> BadSample:
        info = self.info(i)
        return BadSample(info["file"], info["index"], info["id"], reason, info["source"])

    @functools.cached_property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.dataset.with_format(None)["length"]]

    def sizes(self) -> list[int]:
        return self._sizes

    @functools.cached_property
    def _sizes(self) -> list[int]:
        """Rows per configured source, in config order (the order prepare wrote them in)."""
        names = self.dataset.with_format(None)["source"]
        order = {s.name: k for k, s in enumerate(self.sources)}
        positions = [order.get(n, -1) for n in names]
        if -1 in positions or positions != sorted(positions):
            raise StaleCacheError(f"{self.out_dir}: rows are not grouped by this config's sources "
                                  f"{list(order)}; run python -m data prepare again")
        return [bisect.bisect_right(positions, k) - bisect.bisect_left(positions, k)
                for k in range(len(self.sources))]

    def mixture(self, seed: int) -> Mixture:
        sizes = self.sizes()
        for source, n in zip(self.sources, sizes):
            if n == 0:
                raise DataError(f"source {source.name!r} has no samples in the prepared data "
                                f"{self.out_dir}; fix it or remove it from data.sources")
        return Mixture(sizes, [s.weight for s in self.sources], seed)

    def summary(self) -> str:
        return ", ".join(f"{s.name}: {n}" for s, n in zip(self.sources, self.sizes())) + \
            f" (prepared in {self.out_dir})"

    def bad_samples(self) -> list[BadSample]:
        """The samples prepare left out, as it recorded them (not those it kept after a repair)."""
        path = self.out_dir / "bad_samples.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [BadSample.from_json(row) for row in rows if row.get("stage") != "repaired"]
