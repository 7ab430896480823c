"""Training config: typed sections that check themselves (see data/configio.py for loading)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data.config import SourceConfig, VisionBudget
from train.lora import TARGET_PRESETS


@dataclass
class ModelConfig:
    path: str = ""  # a hub id or a local checkpoint folder; the class comes from its config.json
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    def __post_init__(self):
        if not self.path:
            raise ValueError("model.path is required: a checkpoint folder or hub id, "
                             "e.g. model.path=Qwen/Qwen3-VL-8B-Instruct")


@dataclass
class DataConfig:
    """What to train on. One source: ``train`` (+ ``format``, ``image_root``); a mixture:
    ``sources``, a list of ``data.config.SourceConfig`` (path, format, weight, own budget...)."""

    train: str = ""  # one source: a file/folder in ``format`` (see data/sources.py)
    format: str = "llava_json"
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
        for i, source in enumerate(self.source_configs()):
            self.vision.with_overrides(source.vision, f"data.sources[{i}].vision")  # checks keys

    def source_configs(self) -> list[SourceConfig]:
        if self.train:
            return [SourceConfig(path=self.train, format=self.format, image_root=self.image_root)]
        return self.sources

    def budget(self, source: SourceConfig) -> VisionBudget:
        return self.vision.with_overrides(source.vision, f"source {source.name}")


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["llm_attn", "llm_mlp"])
    # Whole modules trained next to the adapters and saved with them (e.g. lm_head).
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in TARGET_PRESETS]
        if unknown:
            raise ValueError(f"lora.targets: unknown preset {unknown[0]!r}; "
                             f"choose from {sorted(TARGET_PRESETS)}")
        if self.enabled and (self.r <= 0 or not self.targets):
            raise ValueError("lora.r must be > 0 and lora.targets non-empty "
                             "(or set lora.enabled=false for full fine-tuning)")


@dataclass
class TrainConfig:
    output_dir: str = "outputs/train"
    seed: int = 0
    max_steps: int = 100
    batch_size: int = 1  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: str | None = None  # "auto" (latest checkpoint in output_dir) or a checkpoint path
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ValueError(f"train.warmup_steps must be in [0, max_steps), got {self.warmup_steps}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
