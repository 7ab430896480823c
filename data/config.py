"""Data config sections shared by training, ``python -m data`` and eval: vision budgets and
the sources of a mixture. They are plain dataclasses loaded by ``data.configio``."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

MIN_SIDE = 32  # Qwen3-VL: patch 16 x merge 2; resized sides are multiples of this

# The formats a source may name: the readers registered in data.sources.FORMATS (a test keeps
# the two equal; the config does not import the readers).
SourceFormat = Literal["llava_json", "messages", "pdf", "page_images", "hf_dataset", "coco",
                       "refcoco", "screenspot"]
SOURCE_FORMATS = typing.get_args(SourceFormat)


@dataclass
class VisionBudget:
    """How many pixels (hence visual tokens) each image and video may use.

    One visual token covers 32x32 pixels (patch 16, 2x2 merge); a video's frames are taken in
    pairs (temporal patch 2), so two sampled frames make one temporal step of tokens.
    """

    # Images: aspect ratio kept, sides rounded to multiples of 32, area within [min, max].
    min_pixels: int = 32 * 32 * 4
    max_pixels: int = 32 * 32 * 256
    # Videos: frames sampled at ``fps`` (or exactly ``num_frames``), clamped to
    # [min_frames, max_frames]; each frame within [video_min_pixels, video_max_pixels] and all
    # frames of one video together within ``video_total_pixels``.
    fps: float = 2.0
    num_frames: int | None = None
    min_frames: int = 4
    max_frames: int = 64
    video_min_pixels: int = 32 * 32 * 4
    video_max_pixels: int = 32 * 32 * 64
    video_total_pixels: int = 32 * 32 * 64 * 32

    def __post_init__(self):
        if self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and "
                             f"{self.max_pixels}")
        if self.video_min_pixels <= 0 or self.video_max_pixels < self.video_min_pixels:
            raise ValueError(f"need 0 < video_min_pixels <= video_max_pixels, got "
                             f"{self.video_min_pixels} and {self.video_max_pixels}")
        if not 0.1 <= self.fps <= 10:
            raise ValueError(f"fps must be in [0.1, 10] (frames sampled per second), got {self.fps}")
        if self.min_frames < 2 or self.max_frames < self.min_frames:
            raise ValueError(f"need 2 <= min_frames <= max_frames, got {self.min_frames} and "
                             f"{self.max_frames}")
        if self.num_frames is not None and self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (the temporal patch is 2), got {self.num_frames}")
        if self.video_total_pixels < self.video_min_pixels * self.min_frames:
            raise ValueError(f"video_total_pixels {self.video_total_pixels} cannot hold min_frames="
                             f"{self.min_frames} frames of video_min_pixels={self.video_min_pixels}")

    def images_kwargs(self) -> dict:
        return {"size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}

    def with_overrides(self, overrides: dict[str, Any], where: str) -> "VisionBudget":
        """This budget with some fields replaced (a source's own budget); ``where`` names the
        config key in errors."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{where}: unknown vision budget key {unknown[0]!r}; known: "
                             f"{', '.join(sorted(known))}")
        try:
            return dataclasses.replace(self, **overrides)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


@dataclass
class SourceConfig:
    """One corpus of a mixture. ``format`` names a reader in ``data.sources.FORMATS``."""

    path: str = ""  # a file, a folder, or (hf_dataset) a hub id / parquet or save_to_disk folder
    format: SourceFormat = "llava_json"
    name: str = ""  # used in reports and stats; default: the path's stem
    image_root: str | None = None  # relative media paths resolve here (default: the file's folder)
    weight: float = 1.0  # relative sampling weight in the mixture
    max_samples: int | None = None  # read at most this many (first N, before weighting)
    vision: dict[str, Any] = field(default_factory=dict)  # overrides of data.* VisionBudget keys
    system_prompt: str | None = None  # prepended as a system turn when a sample has none
    # Formats whose records hold no conversation (hf_dataset, pdf, page_images, coco, refcoco,
    # screenspot) build one from these:
    prompt: str | None = None  # the user question/instruction; format default when None
    columns: dict[str, str] = field(default_factory=dict)  # hf_dataset: role -> column name
    split: str = "train"  # hf_dataset split
    task: str | None = None  # format-specific target kind, e.g. pdf: qa | transcribe_markdown
    dpi: int = 100  # pdf rendering resolution
    pages: str | None = None  # pdf page range, e.g. "1-3,7"; default: all pages
    # hf_dataset / refcoco / screenspot read through `datasets`: the dataset's config name
    # (hub "subset", e.g. DocVQA of lmms-lab/DocVQA); None: the dataset's default.
    subset: str | None = None
    # Grounding formats: layout of the record's boxes, one of data.boxes.BOX_FORMATS
    # (xywh | xyxy | xyxy_norm); None: the format's published layout (xywh for coco, refcoco
    # and ScreenSpot v1/v2 JSON; xyxy_norm for ScreenSpot read through datasets, as the hub
    # mirrors store it). ScreenSpot-Pro's JSON needs xyxy. See data/sources/grounding.py.
    box_format: str | None = None

    def __post_init__(self):
        if not self.path:
            raise ValueError("each data source needs a path")
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"source {self.path}: unknown format {self.format!r}; choose from "
                             f"{', '.join(sorted(SOURCE_FORMATS))}")
        if self.weight <= 0:
            raise ValueError(f"source {self.path}: weight must be > 0, got {self.weight}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"source {self.path}: max_samples must be > 0")
        if not 36 <= self.dpi <= 600:
            raise ValueError(f"source {self.path}: dpi must be in [36, 600], got {self.dpi}")
        if self.box_format is not None:
            from data.boxes import BOX_FORMATS

            if self.box_format not in BOX_FORMATS:
                raise ValueError(f"source {self.path}: box_format must be one of "
                                 f"{', '.join(BOX_FORMATS)}, got {self.box_format!r}")
            if self.format not in ("coco", "refcoco", "screenspot"):
                raise ValueError(f"source {self.path}: box_format is read by the grounding "
                                 f"formats coco, refcoco and screenspot, not {self.format}")
        if self.subset is not None and self.format not in ("hf_dataset", "refcoco", "screenspot"):
            raise ValueError(f"source {self.path}: subset names a datasets config; formats "
                             f"hf_dataset, refcoco and screenspot read one, not {self.format}")
        if not self.name:
            self.name = self.path.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or self.path


@dataclass
class DataConfig:
    """What to train on. One source: ``train`` (+ ``format``, ``image_root``); a mixture:
    ``sources``, a list of ``data.config.SourceConfig`` (path, format, weight, own budget...)."""

    train: str = ""  # one source: a file/folder in ``format`` (see data/sources/)
    format: SourceFormat = "llava_json"
    image_root: str | None = None  # default: the data file's folder
    sources: list[SourceConfig] = field(default_factory=list)
    vision: VisionBudget = field(default_factory=VisionBudget)  # per image / video pixel budget
    max_seq_len: int = 4096
    # Per sample: visual tokens at most this many (None: only max_seq_len bounds them). A sample
    # over either bound is shrunk (its visuals scaled down to fit) or dropped, by over_budget.
    max_visual_tokens: int | None = None
    over_budget: Literal["shrink", "drop"] = "shrink"
    # Batching: packing puts several samples in one row of up to pack_tokens tokens (attention
    # stays within each sample); otherwise batch_size samples are padded to the longest.
    packing: bool = False
    pack_tokens: int = 16384
    group_by_length: bool = False  # without packing: batch samples of similar length together
    # Plan every sample before step 1 (token counts from media headers, ~2k samples/s/core):
    # finds unreadable media and over-budget samples up front. Packing, length grouping and
    # max_visual_tokens need it; turn it off only to start a huge unpacked run sooner.
    plan_ahead: bool = True
    # A cache written by `python -m data prepare` for this data section: training reads the
    # encoded samples from it instead of encoding (a cache built from other data, budgets or
    # processor is refused, saying what differs).
    prepared: str | None = None
    on_bad_sample: Literal["error", "skip"] = "error"
    max_bad_fraction: float = 0.05  # with on_bad_sample=skip: stop if more are bad than this
    num_workers: int = 0

    def __post_init__(self):
        if bool(self.train) == bool(self.sources):
            raise ValueError("set exactly one of data.train (one file) and data.sources (a mixture)")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.max_seq_len <= 0 or self.num_workers < 0:
            raise ValueError("data.max_seq_len must be > 0 and data.num_workers >= 0")
        if self.packing and self.pack_tokens < self.max_seq_len:
            raise ValueError(f"data.pack_tokens ({self.pack_tokens}) must be >= data.max_seq_len "
                             f"({self.max_seq_len}) so that every sample fits in a packed row")
        if not self.plan_ahead and (self.packing or self.group_by_length or self.max_visual_tokens):
            raise ValueError("data.packing, data.group_by_length and data.max_visual_tokens need "
                             "planned sample lengths: set data.plan_ahead=true")
        for i, source in enumerate(self.source_configs()):
            self.vision.with_overrides(source.vision, f"data.sources[{i}].vision")  # checks keys

    def source_configs(self) -> list[SourceConfig]:
        if self.train:
            return [SourceConfig(path=self.train, format=self.format, image_root=self.image_root)]
        return self.sources

    def budget(self, source: SourceConfig) -> VisionBudget:
        return self.vision.with_overrides(source.vision, f"source {source.name}")
