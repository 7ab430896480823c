"""``python -m data prepare``: encode a config's samples once, into a ``datasets`` Arrow cache
that training reads with ``data.prepared: DIR`` (the format and its reader: ``data/prepared.py``).

Encoding (image decode, resize, patchify, chat template, tokenise) is the costly part of data
loading; doing it once lets many runs or processes share the result and shows every sample
that fails to encode before a training run meets it. Samples are read as the trainer reads
them (``data.corpus.load_corpus``): a sample over ``data.max_seq_len`` /
``data.max_visual_tokens`` is shrunk (encoded at its smaller budget) or dropped with a reason,
by ``data.over_budget``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from data.config import DataConfig
from data.encode import REPAIRS
from data.prepared import (FORMAT_VERSION, PACKED_COLUMNS, SEQUENCE_FIELDS, VISUAL_FIELDS,
                           encoding_config, features, pixel_codecs, processor_fingerprint,
                           source_stamp)
from data.samples import BadSample, BadSampleFile, reason_of
from data.tools.stats import SourceSamples, read_for_training


class EncodeRows:
    """Encodes (source position, row) index pairs into rows of ``features`` with each source's
    encoder. A sample that fails to encode becomes a failure record instead."""

    def __init__(self, sources: list[SourceSamples]):
        self.sources = sources
        self.codecs = [pixel_codecs(s.encoder.processor) for s in sources]  # per source

    def encode(self, position: int, row: int) -> tuple[dict | None, BadSample | None, list]:
        """(row of the dataset, None, repair records) or (None, failure record, [])."""
        sample = self.sources[position].samples[row]
        name = self.sources[position].config.name
        meta = {"id": sample.id, "source": name, "file": sample.source, "index": sample.index}
        try:
            example = self.sources[position].encoder.encode(sample)
        except (OSError, ValueError) as e:
            return None, BadSample(sample.source, sample.index, sample.id, reason_of(e), name), []
        repairs = [BadSample(sample.source, sample.index, sample.id, reason, name)
                   for reason in example.pop(REPAIRS, [])]
        unknown = sorted(set(example) - set(SEQUENCE_FIELDS) - set(VISUAL_FIELDS))
        if unknown:  # a new encoder output: extend features() rather than drop it silently
            raise KeyError(f"prepare cannot store encoded field {unknown[0]!r}; add it to "
                           "data.prepared.features")
        row = {**meta, "fields": list(example), "length": len(example["input_ids"])}
        row.update({name: example[name].numpy() if name in example else None
                    for name in (*SEQUENCE_FIELDS, *VISUAL_FIELDS)})
        codecs = self.codecs[position]
        for name, column in PACKED_COLUMNS.items():
            row[column] = None
            packed = codecs[name].pack(example[name]) if name in example else None
            if packed is not None:
                row[column], row[name] = packed, None
        return row, None, repairs


CHUNK_SAMPLES = 32  # at most this many samples per Arrow chunk file (and progress step)
_worker: EncodeRows | None = None


def _init_worker(sources: list[SourceSamples]) -> None:
    global _worker
    torch.set_num_threads(1)  # one core per process; --num-proc sets the parallelism
    _worker = EncodeRows(sources)


def _encode_chunk(task: tuple[str, list[tuple[int, int]], object],
                  worker: EncodeRows | None = None) -> tuple[str, int, list[BadSample], list]:
    """Encode one chunk into an Arrow file with ``worker`` (in a pool: the process's own);
    returns (file, rows written, failure records, repair records)."""
    from datasets.arrow_writer import ArrowWriter

    path, pairs, schema = task
    worker = worker or _worker
    failures, repairs, written = [], [], 0
    with ArrowWriter(features=schema, path=path, writer_batch_size=8) as writer:
        for position, row in pairs:
            encoded, failure, repaired = worker.encode(position, row)
            repairs += repaired
            if failure:
                failures.append(failure)
            else:
                writer.write(encoded)
                written += 1
        writer.finalize()
    return path, written, failures, repairs


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
        chunks = [datasets.Dataset.from_file(path) for path, written, *_ in results if written]
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
    failures = [f for _, _, chunk_failures, _ in results for f in chunk_failures]
    repairs = [r for *_, chunk_repairs in results for r in chunk_repairs]
    table = good.data.table
    stored = {kind: {"uint8": len(good) - table.column(PACKED_COLUMNS[name]).null_count,
                     "float32": len(good) - table.column(name).null_count}
              for kind, name in (("image", "pixel_values"), ("video", "pixel_values_videos"))}
    return _write_reports(cfg, processor, processor_path, out_dir, sources, len(good), failures,
                          repairs, stored)


def _write_reports(cfg: DataConfig, processor, processor_path: str, out_dir: Path,
                   sources: list[SourceSamples], n_good: int, failures: list[BadSample],
                   repairs: list[BadSample], stored: dict) -> dict:
    bad_file = BadSampleFile(out_dir / "bad_samples.jsonl", mode="w")
    bad_file.write([r for s in sources for r in s.bad.records], stage="read")
    bad_file.write(failures, stage="encode")
    bad_file.write(repairs, stage="repaired")  # prepared and kept; the reason says what was done
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
        "config": encoding_config(cfg),
        "processor": os.path.abspath(processor_path),
        "processor_files": processor_fingerprint(processor_path),
        "sources": [source_stamp(s.config) for s in sources],
        "pixel_codecs": {name: c.to_json() for name, c in pixel_codecs(processor).items()},
        "counts": {"samples": n_good, "bad": n_bad,
                   "over_max_bad_fraction": n_good + n_bad > 0
                   and n_bad / (n_good + n_bad) > cfg.max_bad_fraction,
                   "per_source": per_source,
                   # samples with images / videos, by how their pixels are kept (PixelCodec)
                   "image_samples_stored_as": stored["image"],
                   "video_samples_stored_as": stored["video"]},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
