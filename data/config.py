"""Data config sections shared by training, ``python -m data`` and eval: vision budgets and
the sources of a mixture. They are plain dataclasses loaded by ``data.configio``."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

MIN_SIDE = 32  # Qwen3-VL: patch 16 x merge 2; resized sides are multiples of this
PDF_DPI_RANGE = (36, 600)  # rendering resolutions a PDF source (and a pdfpage:// reference) may ask

# The formats a source may name: the readers registered in data.sources.FORMATS (a test keeps
# the two equal; the config does not import the readers).
SourceFormat = Literal["llava_json", "sharegpt", "messages", "alpaca", "swift", "llamafactory",
                       "pdf", "page_images", "hf_dataset", "coco", "refcoco", "screenspot"]
SOURCE_FORMATS = typing.get_args(SourceFormat)


@dataclass
class VisionBudget:
    """How many pixels (hence visual tokens) each image and video may use.

    One visual token covers 32x32 pixels (patch 16, 2x2 merge); a video's frames are taken in
    pairs (temporal patch 2), so two sampled frames make one temporal step of tokens.
    """

    # Images keep their aspect ratio; sides are rounded to multiples of MIN_SIDE.
    min_pixels: int = field(default=32 * 32 * 4, metadata={
        "help": "smallest area of an image, in pixels (smaller images are scaled up)"})
    max_pixels: int = field(default=32 * 32 * 256, metadata={
        "help": "largest area of an image, in pixels (larger images are scaled down); "
                "one visual token per 32x32 pixels"})
    # A record's own fps / nframes beat fps and num_frames here (data/media/video.py).
    fps: float = field(default=2.0, metadata={
        "help": "video frames sampled per second of video, in [0.1, 10]; the count is clamped "
                "to [min_frames, max_frames] and made even"})
    num_frames: int | None = field(default=None, metadata={
        "help": "sample this many frames per video instead of by fps (>= 2; clamped like "
                "fps's count); null: by fps"})
    min_frames: int = field(default=4, metadata={
        "help": "fewest frames sampled from a video (>= 2)"})
    max_frames: int = field(default=64, metadata={"help": "most frames sampled from a video"})
    video_min_pixels: int = field(default=32 * 32 * 4, metadata={
        "help": "smallest area of one video frame, in pixels"})
    video_max_pixels: int = field(default=32 * 32 * 64, metadata={
        "help": "largest area of one video frame, in pixels"})
    video_total_pixels: int = field(default=32 * 32 * 64 * 32, metadata={
        "help": "largest area of all sampled frames of one video together, in pixels (frames "
                "shrink to fit, down to 1.05 x video_min_pixels)"})

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

    path: str = field(default="", metadata={
        "help": "a file or a folder; for hf_dataset a hub id, a parquet file or a save_to_disk "
                "folder; for llamafactory a dataset_info.json or its folder (required)"})
    format: SourceFormat = field(default="llava_json", metadata={
        "help": "the reader of path (data/sources/)"})
    name: str = field(default="", metadata={
        "help": "the source's name in reports and stats; default: the path's stem (llamafactory: "
                "the subset)"})
    image_root: str | None = field(default=None, metadata={
        "help": "folder that relative image paths resolve against; default: the data file's "
                "folder (llamafactory: the dataset_info.json folder)"})
    video_root: str | None = field(default=None, metadata={
        "help": "folder that relative video paths resolve against; default: image_root"})
    allow_outside_root: bool = field(default=False, metadata={
        "help": "relative media paths that resolve outside their root (image_root / "
                "video_root) are refused unless true"})
    weight: float = field(default=1.0, metadata={
        "help": "relative sampling weight in the mixture (> 0)"})
    max_samples: int | None = field(default=None, metadata={
        "help": "read at most this many samples (the first N, before weighting); null: all"})
    vision: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "this source's own pixel budget: overrides of data.vision keys, e.g. "
                "{max_pixels: 1048576}"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "prepended as a system turn to samples that have none"})
    # The keys below let formats whose records hold no conversation (hf_dataset, pdf,
    # page_images, coco, refcoco, screenspot) build one.
    prompt: str | None = field(default=None, metadata={
        "help": "the user question or instruction of formats that build the conversation; "
                "null: the format's default"})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "hf_dataset, refcoco, screenspot: role -> column name, e.g. {image: img, "
                "question: q, answer: a}; roles left out are guessed from common names"})
    split: str = field(default="train", metadata={
        "help": "hf_dataset, refcoco, screenspot: the dataset split to read"})
    task: str | None = field(default=None, metadata={
        "help": "format-specific target kind, e.g. pdf: qa | transcribe_markdown; null: the "
                "format's default"})
    dpi: int = field(default=100, metadata={"help": "pdf: rendering resolution, in [36, 600]"})
    pages: str | None = field(default=None, metadata={
        "help": "pdf: page range, e.g. \"1-3,7\"; null: all pages"})
    subset: str | None = field(default=None, metadata={
        "help": "hf_dataset, refcoco, screenspot (read through `datasets`): the dataset's config "
                "name (the hub \"subset\", e.g. DocVQA of lmms-lab/DocVQA); null: its default. "
                "llamafactory: the dataset's name in dataset_info.json (null: its only entry)"})
    # The published layouts differ (see data/sources/grounding.py): xywh for coco, refcoco and
    # ScreenSpot v1/v2 JSON; xyxy_norm for ScreenSpot read through datasets, as the hub mirrors
    # store it; ScreenSpot-Pro's JSON needs xyxy.
    box_format: str | None = field(default=None, metadata={
        "help": "coco, refcoco, screenspot: layout of the record's boxes, one of xywh, xyxy, "
                "xyxy_norm (data.boxes.BOX_FORMATS); null: the format's published layout"})

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
        low, high = PDF_DPI_RANGE
        if not low <= self.dpi <= high:
            raise ValueError(f"source {self.path}: dpi must be in [{low}, {high}], got {self.dpi}")
        if self.box_format is not None:
            from data.boxes import BOX_FORMATS

            if self.box_format not in BOX_FORMATS:
                raise ValueError(f"source {self.path}: box_format must be one of "
                                 f"{', '.join(BOX_FORMATS)}, got {self.box_format!r}")
            if self.format not in ("coco", "refcoco", "screenspot"):
                raise ValueError(f"source {self.path}: box_format is read by the grounding "
                                 f"formats coco, refcoco and screenspot, not {self.format}")
        if self.subset is not None and self.format not in ("hf_dataset", "refcoco", "screenspot",
                                                           "llamafactory"):
            raise ValueError(f"source {self.path}: subset names a datasets config (or a "
                             f"llamafactory dataset_info entry); formats hf_dataset, refcoco, "
                             f"screenspot and llamafactory read one, not {self.format}")
        if not self.name and self.format == "llamafactory" and self.subset:
            self.name = self.subset  # the dataset's name, not "dataset_info"
        if not self.name:
            self.name = self.path.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or self.path


@dataclass
class DataConfig:
    """What to train on. One source: ``train`` (+ ``format``, ``image_root``, ``video_root``,
    ``allow_outside_root``); a mixture:
    ``sources``, a list of ``data.config.SourceConfig`` (path, format, weight, own budget...)."""

    train: str = field(default="", metadata={
        "help": "one source: a file or folder in data.format (set this or data.sources)"})
    format: SourceFormat = field(default="llava_json", metadata={
        "help": "the reader of data.train (data/sources/)"})
    image_root: str | None = field(default=None, metadata={
        "help": "folder that data.train's relative image paths resolve against; default: the "
                "data file's folder"})
    video_root: str | None = field(default=None, metadata={
        "help": "folder that data.train's relative video paths resolve against; default: "
                "data.image_root"})
    allow_outside_root: bool = field(default=False, metadata={
        "help": "relative media paths of data.train that resolve outside their root are "
                "refused unless true"})
    sources: list[SourceConfig] = field(default_factory=list, metadata={
        "help": "a mixture: one entry per corpus (set this or data.train)"})
    vision: VisionBudget = field(default_factory=VisionBudget, metadata={
        "help": "pixel budget of each image and video (a source's vision overrides it)"})
    max_seq_len: int = field(default=4096, metadata={
        "help": "most tokens (text and visual) in one sample"})
    max_visual_tokens: int | None = field(default=None, metadata={
        "help": "most visual tokens in one sample; null: only max_seq_len bounds them"})
    over_budget: Literal["shrink", "drop"] = field(default="shrink", metadata={
        "help": "a sample over max_seq_len or max_visual_tokens: shrink (scale its visuals "
                "down to fit) or drop it"})
    packing: bool = field(default=False, metadata={
        "help": "put several samples in one row of up to pack_tokens tokens (attention stays "
                "within each sample); off: batch_size samples padded to the longest"})
    pack_tokens: int = field(default=16384, metadata={
        "help": "tokens in one packed row (>= max_seq_len), with packing"})
    group_by_length: bool = field(default=False, metadata={
        "help": "without packing: batch samples of similar length together (less padding)"})
    # Planning reads token counts from media headers (~2k samples/s/core); off only to start a
    # huge unpacked run sooner.
    plan_ahead: bool = field(default=True, metadata={
        "help": "plan every sample before step 1, finding unreadable media and over-budget "
                "samples up front; packing, group_by_length and max_visual_tokens need it"})
    # A cache built from other data, budgets or processor is refused, saying what differs.
    prepared: str | None = field(default=None, metadata={
        "help": "a cache written by `python -m data prepare` for this data section: training "
                "reads the encoded samples from it instead of encoding"})
    max_image_pixels: int = field(default=89_478_485, metadata={
        "help": "an image whose header claims more pixels is a bad sample, refused before any "
                "decode (a decompression bomb guard; default PIL's limit, about 0.25 GB of RGB). "
                "JPEGs much larger than their budget decode at a reduced scale"})
    on_bad_sample: Literal["error", "skip"] = field(default="error", metadata={
        "help": "a sample that cannot be read or encoded: error (stop) or skip it (counted)"})
    max_bad_fraction: float = field(default=0.05, metadata={
        "help": "with on_bad_sample=skip: stop when more than this fraction of samples is bad, "
                "in [0, 1]"})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes (0: load in the training process)"})

    def __post_init__(self):
        if bool(self.train) == bool(self.sources):
            raise ValueError("set exactly one of data.train (one file) and data.sources (a mixture)")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.max_image_pixels <= 0:
            raise ValueError(f"data.max_image_pixels must be > 0, got {self.max_image_pixels}")
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
            return [SourceConfig(path=self.train, format=self.format, image_root=self.image_root,
                                 video_root=self.video_root,
                                 allow_outside_root=self.allow_outside_root)]
        return self.sources

    def budget(self, source: SourceConfig) -> VisionBudget:
        return self.vision.with_overrides(source.vision, f"source {source.name}")
