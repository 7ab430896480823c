"""``python -m data prepare``: encode a config's samples once, into a ``datasets`` Arrow cache.

Encoding (image decode, resize, patchify, chat template, tokenise) is the costly part of data
loading; doing it once lets many runs or processes share the result and shows every sample
that fails to encode before a training run meets it. The output folder holds:

- ``dataset/``: ``Dataset.save_to_disk`` with one row per encoded sample: ``input_ids``,
  ``attention_mask``, ``mm_token_type_ids``, ``labels``, ``pixel_values`` / ``image_grid_thw``
  (and the video pair), ``fields`` (which of those the sample has), ``id``, ``source``
  (the source's name), ``file`` and ``index`` (record in the source file);
- ``bad_samples.jsonl``: samples that could not be read, planned, fitted to the budget
  (``stage: read``) or encoded (``stage: encode``): file, index, id, reason;
- ``manifest.json``: the data config, the processor path and a hash of its files, a stamp of
  each source file, and counts. ``stale_reasons`` compares it with a config so a cache built
  from other data, budgets or tokenizer is noticed (media files themselves are not hashed).

``PreparedDataset`` reads the cache back into exactly the dicts ``SampleEncoder.encode``
returns (torch tensors of the same dtypes), so a prepared cache can stand in for encoding.
Samples are read as the trainer reads them (``data.corpus.load_corpus``): a sample over
``data.max_seq_len`` / ``data.max_visual_tokens`` is shrunk (encoded at its smaller budget) or
dropped with a reason, by ``data.over_budget``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data.config import DataConfig
from data.samples import BadSample, BadSampleFile, DataError
from data.tools.stats import SourceSamples, read_for_training

FORMAT_VERSION = 1
SEQUENCE_FIELDS = ("input_ids", "attention_mask", "mm_token_type_ids", "labels")
VISUAL_FIELDS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
META_COLUMNS = ("id", "source", "file", "index")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
MODEL_ONLY_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


class StaleCacheError(DataError):
    """A prepared cache that does not match the config or processor it is used with."""


def features(processor):
    """The Arrow schema: token sequences, visual tensors (rows x patch width) and metadata."""
    from datasets import Array2D, Features, Sequence, Value

    def patch_width(part) -> int:
        return 3 * part.temporal_patch_size * part.patch_size ** 2

    columns = {name: Value("string") for name in ("id", "source", "file")}
    columns.update(index=Value("int64"), fields=Sequence(Value("string")))
    columns.update({name: Sequence(Value("int64")) for name in SEQUENCE_FIELDS})
    columns["pixel_values"] = Array2D((None, patch_width(processor.image_processor)), "float32")
    columns["image_grid_thw"] = Array2D((None, 3), "int64")
    columns["pixel_values_videos"] = Array2D((None, patch_width(processor.video_processor)), "float32")
    columns["video_grid_thw"] = Array2D((None, 3), "int64")
    return Features(columns)


class EncodeRows:
    """Encodes (source position, row) index pairs into rows of ``features`` with each source's
    encoder. A sample that fails to encode becomes a failure record instead."""

    def __init__(self, sources: list[SourceSamples]):
        self.sources = sources

    def encode(self, position: int, row: int) -> tuple[dict | None, BadSample | None]:
        """(row of the dataset, None) or (None, failure record)."""
        sample = self.sources[position].samples[row]
        name = self.sources[position].config.name
        meta = {"id": sample.id, "source": name, "file": sample.source, "index": sample.index}
        try:
            example = self.sources[position].encoder.encode(sample)
        except (OSError, ValueError) as e:
            return None, BadSample(sample.source, sample.index, sample.id,
                                   f"{type(e).__name__}: {e}", name)
        unknown = sorted(set(example) - set(SEQUENCE_FIELDS) - set(VISUAL_FIELDS))
        if unknown:  # a new encoder output: extend features() rather than drop it silently
            raise KeyError(f"prepare cannot store encoded field {unknown[0]!r}; add it to "
                           "data.tools.prepare.features")
        row = {**meta, "fields": list(example)}
        row.update({name: example[name].numpy() if name in example else None
                    for name in (*SEQUENCE_FIELDS, *VISUAL_FIELDS)})
        return row, None


CHUNK_SAMPLES = 32  # at most this many samples per Arrow chunk file (and progress step)
_worker: EncodeRows | None = None


def _init_worker(sources: list[SourceSamples]) -> None:
    global _worker
    torch.set_num_threads(1)  # one core per process; --num-proc sets the parallelism
    _worker = EncodeRows(sources)


def _encode_chunk(task: tuple[str, list[tuple[int, int]], object],
                  worker: EncodeRows | None = None) -> tuple[str, int, list[BadSample]]:
    """Encode one chunk into an Arrow file with ``worker`` (in a pool: the process's own);
    returns (file, rows written, failure records)."""
    from datasets.arrow_writer import ArrowWriter

    path, pairs, schema = task
    worker = worker or _worker
    failures, written = [], 0
    with ArrowWriter(features=schema, path=path, writer_batch_size=8) as writer:
        for position, row in pairs:
            encoded, failure = worker.encode(position, row)
            if failure:
                failures.append(failure)
            else:
                writer.write(encoded)
                written += 1
        writer.finalize()
    return path, written, failures


def run(cfg: DataConfig, processor, processor_path: str, out_dir: str | Path, num_proc: int = 1,
        progress: bool = True) -> dict:
    """Encode every sample of ``cfg`` into ``out_dir/dataset``; write ``bad_samples.jsonl`` and
    ``manifest.json``. Returns the manifest.

    With ``num_proc`` > 1, chunks of samples are encoded by a pool of *spawned* processes (a
    forked child of a process whose torch thread pool is running can hang in its first torch
    op); each chunk is its own Arrow file, concatenated in order at the end."""
    import multiprocessing

    import datasets
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = read_for_training(cfg, processor, progress=progress)
    pairs = [(p, r) for p, s in enumerate(sources) for r in range(len(s.samples))]
    scratch = out_dir / ".encode-chunks"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    schema = features(processor)
    # Chunks small enough that every process gets several (a smooth bar, balanced work).
    size = max(1, min(CHUNK_SAMPLES, -(-len(pairs) // (4 * max(1, num_proc)))))
    tasks = [(str(scratch / f"chunk-{k:06d}.arrow"), pairs[i:i + size], schema)
             for k, i in enumerate(range(0, len(pairs), size))]
    bar = tqdm(total=len(pairs), desc="encoding", unit="sample", disable=not progress)
    results = []
    try:
        if num_proc > 1 and len(tasks) > 1:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(num_proc, len(tasks)), _init_worker, (sources,)) as pool:
                for result in pool.imap(_encode_chunk, tasks):
                    results.append(result)
                    bar.update(result[1] + len(result[2]))
        else:
            worker = EncodeRows(sources)
            for task in tasks:
                results.append(_encode_chunk(task, worker))
                bar.update(results[-1][1] + len(results[-1][2]))
        bar.close()
        chunks = [datasets.Dataset.from_file(path) for path, written, _ in results if written]
        good = (datasets.concatenate_datasets(chunks) if chunks
                else datasets.Dataset.from_dict({}, features=schema))
        target = out_dir / "dataset"
        shutil.rmtree(target, ignore_errors=True)
        was_enabled = datasets.is_progress_bar_enabled()
        (datasets.enable_progress_bars if progress else datasets.disable_progress_bars)()
        try:
            good.save_to_disk(str(target))
        finally:
            (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()
    finally:
        bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
    failures = [f for _, _, chunk_failures in results for f in chunk_failures]
    return _write_reports(cfg, processor_path, out_dir, sources, len(good), failures)


def _write_reports(cfg: DataConfig, processor_path: str, out_dir: Path,
                   sources: list[SourceSamples], n_good: int, failures: list[dict]) -> dict:
    from data.configio import to_dict

    bad_file = BadSampleFile(out_dir / "bad_samples.jsonl", mode="w")
    bad_file.write([r for s in sources for r in s.bad.records], stage="read")
    bad_file.write(failures, stage="encode")
    per_source = {}
    for s in sources:
        n_failed = sum(e.source == s.config.name for e in failures)
        per_source[s.config.name] = {"read": len(s.samples), "bad_records": len(s.bad.records),
                                     "shrunk": sum(x.vision_budget is not None for x in s.samples),
                                     "failed_to_encode": n_failed,
                                     "encoded": len(s.samples) - n_failed}
    n_bad = sum(len(s.bad.records) for s in sources) + len(failures)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": json.loads(json.dumps(to_dict(cfg))),
        "processor": os.path.abspath(processor_path),
        "processor_files": processor_fingerprint(processor_path),
        "sources": [source_stamp(s.config) for s in sources],
        "counts": {"samples": n_good, "bad": n_bad,
                   "over_max_bad_fraction": n_good + n_bad > 0
                   and n_bad / (n_good + n_bad) > cfg.max_bad_fraction,
                   "per_source": per_source},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


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


def source_stamp(source) -> dict:
    """Size and mtime of a source's file (or of each file directly in its folder)."""
    path = Path(source.path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) \
        if path.is_dir() else []
    return {"name": source.name, "path": source.path, "format": source.format,
            "files": {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def stale_reasons(out_dir: str | Path, cfg: DataConfig, processor_path: str) -> list[str]:
    """Why the cache in ``out_dir`` does not match ``cfg`` and the processor (empty: it does)."""
    from data.configio import to_dict

    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return [f"{path} not found: run python -m data prepare first"]
    manifest = json.loads(path.read_text())
    reasons = []
    if manifest.get("format_version") != FORMAT_VERSION:
        reasons.append(f"cache format {manifest.get('format_version')} != {FORMAT_VERSION}")
    config = json.loads(json.dumps(to_dict(cfg)))
    changed = sorted(k for k in set(config) | set(manifest["config"])
                     if config.get(k) != manifest["config"].get(k))
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


class PreparedDataset(torch.utils.data.Dataset):
    """A prepared cache read back: item ``i`` is the dict ``SampleEncoder.encode`` returned for
    that sample. Given ``cfg`` and ``processor_path``, a stale cache raises ``StaleCacheError``."""

    def __init__(self, out_dir: str | Path, cfg: DataConfig | None = None,
                 processor_path: str | None = None):
        import datasets

        if cfg is not None and processor_path is not None:
            reasons = stale_reasons(out_dir, cfg, processor_path)
            if reasons:
                raise StaleCacheError(f"prepared data in {out_dir} is stale: {'; '.join(reasons)}. "
                                      "Run python -m data prepare again.")
        self.dataset = datasets.load_from_disk(str(Path(out_dir) / "dataset")).with_format("numpy")

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
