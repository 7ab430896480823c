"""A prepared cache: every sample of a data config encoded once into a ``datasets`` Arrow
dataset (written by ``python -m data prepare``, ``data/tools/prepare.py``), and read back here
as a training corpus (``data.prepared: DIR`` in a training config).

The folder holds:

- ``dataset/``: ``Dataset.save_to_disk`` with one row per encoded sample: ``input_ids``,
  ``attention_mask``, ``mm_token_type_ids``, ``labels``, ``pixel_values`` / ``image_grid_thw``
  (and the video pair), ``fields`` (which of those the sample has), ``length`` (tokens),
  ``id``, ``source`` (the source's name), ``file`` and ``index`` (record in the source file).
  Pixels are kept as the uint8 pixels they were normalised from (``image_pixels`` /
  ``video_pixels``, see ``PixelCodec``: an eighth / a quarter of the bytes) wherever that gives
  back the exact floats. Rows come source by source, in config order;
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
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from data.config import DataConfig, SourceConfig
from data.mixture import Mixture
from data.samples import BadSample, DataError

FORMAT_VERSION = 3
SEQUENCE_FIELDS = ("input_ids", "attention_mask", "mm_token_type_ids", "labels")
VISUAL_FIELDS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
META_COLUMNS = ("id", "source", "file", "index")
# The uint8 column that holds a float pixel field when it packs exactly (PixelCodec).
PACKED_COLUMNS = {"pixel_values": "image_pixels", "pixel_values_videos": "video_pixels"}
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
    for field_name, codec in pixel_codecs(processor).items():
        columns[PACKED_COLUMNS[field_name]] = Array2D((None, codec.width), "uint8")
    return Features(columns)


@dataclass(frozen=True)
class PixelCodec:
    """Visual ``pixel_values`` stored as the uint8 pixels they came from. The processor turns
    each patch into float32 ``(pixel * rescale - mean) / std`` values, and repeats an image over
    the temporal patch (one frame shown twice): 8 bytes kept per pixel byte for images (24 KB
    per visual token, terabytes for a large corpus), 4 for videos (whose temporal frames
    differ). ``pack`` inverts that and keeps the uint8 patches only if ``unpack`` gives back
    exactly the same floats (a processor with other arithmetic keeps its floats, just bigger);
    ``unpack`` redoes the processor's fused float32 normalisation. ``repeated``: the frames of
    a patch are one frame repeated (images; one is stored)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float
    temporal: int
    patch: int
    repeated: bool

    @classmethod
    def of(cls, part, repeated: bool) -> "PixelCodec":
        """For an image or video processor (``repeated``: images)."""
        return cls(tuple(part.image_mean), tuple(part.image_std), float(part.rescale_factor),
                   int(part.temporal_patch_size), int(part.patch_size), repeated)

    @property
    def frames(self) -> int:
        return 1 if self.repeated else self.temporal

    @property
    def width(self) -> int:
        """uint8 values per patch (the kept frames of channels x patch x patch)."""
        return len(self.mean) * self.frames * self.patch ** 2

    def _scaled(self) -> tuple[torch.Tensor, torch.Tensor]:
        # The processors' fused rescale + normalise, in their float32 arithmetic.
        shape = (1, len(self.mean), 1, 1)
        return ((torch.tensor(self.mean) * (1.0 / self.rescale)).view(shape),
                (torch.tensor(self.std) * (1.0 / self.rescale)).view(shape))

    def unpack(self, pixels: np.ndarray) -> torch.Tensor:
        """(patches, width) uint8 -> the processor's (patches, channels x temporal x patch^2)
        float32."""
        mean, std = self._scaled()
        n = len(pixels)
        x = torch.from_numpy(pixels).view(n, len(self.mean), self.frames, -1).to(torch.float32)
        x = (x - mean) / std
        return x.expand(-1, -1, self.temporal, -1).reshape(n, -1)

    def pack(self, values: torch.Tensor) -> np.ndarray | None:
        """uint8 patches that ``unpack`` to exactly ``values``, or None (keep the floats)."""
        n, channels = len(values), len(self.mean)
        full = channels * self.temporal * self.patch ** 2
        if values.dtype != torch.float32 or values.dim() != 2 or values.shape[-1] != full:
            return None
        frames = values.reshape(n, channels, self.temporal, -1)
        if self.repeated:
            if not bool((frames == frames[:, :, :1]).all()):
                return None  # the frames differ: not one image repeated
            frames = frames[:, :, :1]
        mean, std = self._scaled()
        pixels = torch.round(frames.double() * std.double() + mean.double())
        if pixels.numel() and (pixels.min() < 0 or pixels.max() > 255):
            return None
        packed = pixels.to(torch.uint8).reshape(n, -1).numpy()
        return packed if torch.equal(self.unpack(packed), values) else None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "PixelCodec":
        return cls(tuple(d["mean"]), tuple(d["std"]), d["rescale"], d["temporal"], d["patch"],
                   d["repeated"])


def pixel_codecs(processor) -> dict[str, PixelCodec]:
    """Each float pixel field and the codec of its uint8 column (``PACKED_COLUMNS``)."""
    return {"pixel_values": PixelCodec.of(processor.image_processor, repeated=True),
            "pixel_values_videos": PixelCodec.of(processor.video_processor, repeated=False)}


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

def _values(column) -> np.ndarray:
    """The one cell of a one-row Arrow column as a writable numpy array: a sequence as 1-D, an
    ``Array2D`` (rows x width) as 2-D."""
    cell = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(cell.type, pa.ExtensionType):
        flat = cell.storage.flatten().flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(-1, cell.type.shape[-1]).copy()
    values = cell.flatten()
    if pa.types.is_string(values.type):
        return np.array(values.to_pylist(), dtype=object)
    return values.to_numpy(zero_copy_only=False).copy()


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
        self.dataset = datasets.load_from_disk(str(self.out_dir / "dataset"))
        # Rows are read straight from the Arrow table: the `datasets` row formatter
        # deserialises every column of every row (several ms a row, slower than encoding).
        self.table = self.dataset.data.table
        manifest = json.loads((self.out_dir / "manifest.json").read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StaleCacheError(f"prepared data in {out_dir} has format "
                                  f"{manifest.get('format_version')}, not {FORMAT_VERSION}: run "
                                  "python -m data prepare again")
        self.codecs = {name: PixelCodec.from_json(c) for name, c in manifest["pixel_codecs"].items()}
        self.sources = cfg.source_configs() if cfg is not None else []
        self._names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.table.slice(int(i), 1)
        item = {}
        for name in _values(row.column("fields")).tolist():
            packed = PACKED_COLUMNS.get(name)
            if packed is not None and row.column(packed).null_count == 0:
                item[name] = self.codecs[name].unpack(_values(row.column(packed)))
            else:
                item[name] = torch.from_numpy(_values(row.column(name)))
        return item

    def info(self, i: int) -> dict:
        """Where item ``i`` came from: sample id, source name, file and record index."""
        row = self.table.select(list(META_COLUMNS)).slice(int(i), 1).to_pylist()[0]
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
