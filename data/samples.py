"""The sample stage: a source record becomes chat messages plus the media files they reference.

A ``Sample`` is what every source (LLaVA JSON, messages JSONL, HF datasets, documents...)
produces, and what the encoder consumes. Problems found while reading a
source become ``BadSample`` records that name the file, the record index and the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input that stops a run: names the file, the record and the reason."""


class SampleError(ValueError):
    """A problem with one sample whose message is the whole reason (it names the file and says
    what is wrong), e.g. ``data.media.images.MediaError``; reports quote it as it is."""


def reason_of(error: Exception) -> str:
    """The reason a bad-sample record gives for ``error``: a ``SampleError``'s own message, else
    the exception's type and message (an unexpected error says what it was)."""
    return str(error) if isinstance(error, SampleError) else f"{type(error).__name__}: {error}"


# bad_samples.jsonl: one JSON object per line, these keys in this order, written by every tool
# and by training alike (BadSample.to_json). ``file``: the data file, folder or "dataset [split]"
# the record came from; ``index``: the record's position there (JSONL: line number - 1; a PDF
# folder: a running page count); ``id``: the sample id when the record got that far; ``reason``;
# ``source``: the configured source's name; ``stage``: "read" (found before step 1, while reading
# and planning), "encode" (when the sample was encoded) or "repaired" (the sample WAS used, after
# a documented repair the reason names, e.g. video frames that failed to decode were filled);
# ``rank`` and ``step``: which process and optimizer step met it (training only, else null).
BAD_SAMPLE_KEYS = ("file", "index", "id", "reason", "source", "stage", "rank", "step")


@dataclass
class BadSample:
    file: str
    index: int
    sample_id: str | None
    reason: str
    source: str | None = None  # the configured source's name, when known

    def __str__(self) -> str:
        sid = f" (id {self.sample_id})" if self.sample_id is not None else ""
        return f"{self.file}: sample {self.index}{sid}: {self.reason}"

    @property
    def kind(self) -> str:
        """The reason without its particulars (paths, counts, quoted values), for counting."""
        head = self.reason.split(":")[0].split(" (")[0]
        return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", head)).strip()

    def to_json(self, stage: str, rank: int | None = None, step: int | None = None) -> dict:
        """This record as a line of bad_samples.jsonl (``BAD_SAMPLE_KEYS``)."""
        return {"file": self.file, "index": self.index, "id": self.sample_id, "reason": self.reason,
                "source": self.source, "stage": stage, "rank": rank, "step": step}

    @classmethod
    def from_json(cls, row: dict) -> "BadSample":
        return cls(row["file"], row["index"], row["id"], row["reason"], row.get("source"))


@dataclass
class Sample:
    """One conversation. ``messages`` use Qwen/OpenAI content parts: ``{"type": "image"}`` marks
    where the i-th entry of ``images`` goes, ``{"type": "video"}`` where the i-th entry of
    ``videos`` (``data.media.video.VideoRef``) goes; ``{"type": "text", "text": ...}`` carries text."""

    id: str
    messages: list[dict]
    images: list[str] = field(default_factory=list)
    source: str = ""
    index: int = -1
    meta: dict = field(default_factory=dict)
    videos: list = field(default_factory=list)  # last, so positional construction is unchanged
    # A smaller data.config.VisionBudget than its source's, set when the sample was shrunk to
    # fit data.max_seq_len / data.max_visual_tokens (data.over_budget=shrink); None: the source's.
    vision_budget: object | None = None

    def answer(self) -> str:
        """Text of the last assistant turn (the reference answer in eval sets)."""
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return "".join(p.get("text", "") for p in message["content"])
        return ""

    def prompt_messages(self) -> list[dict]:
        """Messages up to (not including) the last assistant turn: the model's input at eval."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]


class BadSampleLog:
    """Collects bad samples; ``policy`` says whether the first one stops the run."""

    def __init__(self, policy: str = "error"):
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.records: list[BadSample] = []

    def add(self, record: BadSample) -> None:
        if self.policy == "error":
            raise DataError(f"{record}. Fix the sample, or set data.on_bad_sample=skip to skip it.")
        self.records.append(record)

    def name_source(self, start: int, name: str) -> None:
        """Give records ``start:`` (those found while reading one source) that source's name."""
        for record in self.records[start:]:
            record.source = record.source or name

    def counts(self) -> Counter:
        return Counter(r.kind for r in self.records)

    def report(self, n_good: int) -> str:
        """Counts per reason plus the first few records, for logs and errors."""
        total = n_good + len(self.records)
        lines = [f"{len(self.records)} of {total} samples are bad:"]
        lines += [f"  {n:6d}  {kind}" for kind, n in self.counts().most_common()]
        lines += [f"  e.g. {r}" for r in self.records[:3]]
        return "\n".join(lines)

    def check_fraction(self, n_good: int, max_fraction: float) -> None:
        """Stop when more than ``max_fraction`` of the samples are bad (a wrong path or format
        is likelier than a few broken records)."""
        total = n_good + len(self.records)
        if total and len(self.records) / total > max_fraction:
            raise DataError(f"{self.report(n_good)}\nThat is more than data.max_bad_fraction="
                            f"{max_fraction}; check the data path, image_root and format.")


class BadSampleFile:
    """Appends bad-sample records to a ``bad_samples.jsonl`` (schema: ``BAD_SAMPLE_KEYS``), so
    every skipped sample is on disk with its file, record, id, reason, source and stage."""

    def __init__(self, path, rank: int | None = None, mode: str = "a"):
        self.path, self.rank = path, rank
        if mode == "w":  # start the file afresh (a tool's report of one pass over the data)
            open(path, "w").close()

    def write(self, records: list[BadSample], stage: str, step: int | None = None) -> None:
        import json

        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r.to_json(stage, self.rank, step)) + "\n")
