"""Training config: typed sections that check themselves (see data/configio.py for loading)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data.config import DataConfig
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

    def __post_init__(self):
        if self.data.packing and self.train.batch_size != 1:
            raise ValueError("with data.packing=true a micro-batch is one packed row of up to "
                             "data.pack_tokens tokens: set train.batch_size=1 and size the step "
                             "with data.pack_tokens and train.grad_accum")
