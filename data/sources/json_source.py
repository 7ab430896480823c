"""The per-record loop of the JSON formats: every record of a JSON / JSONL file becomes a sample
or a bad-sample record naming the file, the record and the reason. No input record may stop a
reader: besides the converters' own ValueErrors, a TypeError / KeyError / AttributeError /
IndexError met while converting (a value of a type no check foresaw) is recorded too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from data.config import SourceConfig
from data.samples import BadSample, BadSampleLog, Sample
from data.sources.media_refs import MediaRoots
from data.sources.records import iter_records, record_id

# convert(record, index, roots, source) -> Sample; ValueError: the record is a bad sample.
Convert = Callable[[dict, int, MediaRoots, str], Sample]
SAFETY_NET = (TypeError, KeyError, AttributeError, IndexError)


def read_file(path: Path, roots: MediaRoots, bad: BadSampleLog, convert: Convert) -> list[Sample]:
    """The samples of one JSON / JSONL file; records that cannot be one go to ``bad``."""
    samples = []
    for index, record in iter_records(path, bad):
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, got {type(record).__name__}")
            samples.append(convert(record, index, roots, str(path)))
        except ValueError as e:
            bad.add(BadSample(str(path), index, record_id(record, index), str(e)))
        except SAFETY_NET as e:
            bad.add(BadSample(str(path), index, _safe_id(record, index),
                              f"unreadable record {index} ({type(e).__name__}: {e})"))
    return samples


def _safe_id(record, index: int) -> str | None:
    try:
        return record_id(record, index)
    except Exception:  # noqa: BLE001 - an id that cannot even be printed
        return None


def json_reader(convert: Convert):
    """A reader ``(cfg, bad) -> samples`` of a source whose path is one JSON / JSONL file and
    whose records each convert to one sample; media resolve against the source's roots."""

    def read(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
        path = Path(cfg.path)
        return read_file(path, MediaRoots.for_source(cfg, path.parent), bad, convert)

    return read
