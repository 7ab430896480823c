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
    # MoE expert kernels (transformers' experts_implementation): grouped_mm is one grouped GEMM
    # per layer; eager is the per-expert loop. None keeps the checkpoint's default.
    experts_implementation: Literal["grouped_mm", "batched_mm", "eager"] | None = None
    gradient_checkpointing: bool = False

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
    use_rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # weight-decomposed LoRA (peft; not for fused MoE experts)
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
    keep_best: bool = False  # also keep the checkpoint with the lowest train loss since the last save
    resume: str | None = None  # "auto" (latest checkpoint in output_dir) or a checkpoint path
    progress: bool = True
    # Which parts learn. Full fine-tuning trains every unfrozen part; LoRA puts adapters only on
    # unfrozen parts (a lora.targets preset inside a frozen part is an error, not ignored).
    freeze_vision: bool = False  # the vision tower's patch embedding, position table and blocks
    freeze_merger: bool = False  # the merger and the deepstack mergers
    freeze_llm: bool = False  # the language model and lm_head
    vision_lr: float | None = None  # None: train.lr
    merger_lr: float | None = None  # None: train.lr
    # A step whose loss or gradient norm is NaN/inf: "skip" (no update, counted) or "stop".
    on_nan: Literal["skip", "stop"] = "skip"
    max_nan_steps: int = 10  # "skip" still stops after this many such steps in a row

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for name in ("vision_lr", "merger_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0 (or null for train.lr)")
        if self.freeze_vision and self.freeze_merger and self.freeze_llm:
            raise ValueError("train.freeze_vision, freeze_merger and freeze_llm are all true: "
                             "nothing would train; unfreeze at least one part")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ValueError(f"train.warmup_steps must be in [0, max_steps), got {self.warmup_steps}")


@dataclass
class MoeConfig:
    """Router losses and statistics for Qwen3-VL-MoE (ignored keys on a dense model are errors)."""
    aux_loss_coef: float | None = None  # load-balancing loss weight; None: the checkpoint's
    z_loss_coef: float = 0.0  # router z-loss weight (mean squared logsumexp of router logits)
    log_expert_load: bool = True  # per-layer expert token counts in metrics.jsonl

    def __post_init__(self):
        if (self.aux_loss_coef or 0) < 0 or self.z_loss_coef < 0:
            raise ValueError("moe.aux_loss_coef and moe.z_loss_coef must be >= 0")


@dataclass
class DistributedConfig:
    # A DeepSpeed JSON config: a path, or a shipped name (zero2, zero3, zero3_offload) from
    # configs/deepspeed/. None: plain DDP (or a single process).
    deepspeed: str | None = None
    expert_parallel: int = 1  # expert-parallel group size (DeepSpeed AutoEP, ZeRO-3, MoE only)
    ep_preset: str = "qwen3_vl_moe"  # which AutoEP module map to use (train/expert_parallel.py)

    def __post_init__(self):
        if self.expert_parallel < 1:
            raise ValueError("distributed.expert_parallel must be >= 1")
        if self.expert_parallel > 1 and not self.deepspeed:
            raise ValueError("distributed.expert_parallel > 1 needs DeepSpeed ZeRO-3: set "
                             "distributed.deepspeed=zero3 (or a ZeRO-3 JSON)")


@dataclass
class LoggingConfig:
    report_to: list[Literal["wandb", "tensorboard"]] = field(default_factory=list)
    wandb_project: str = "qwen3vl-tune"
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: sync later with `wandb sync`
    run_name: str | None = None  # None: the output_dir's name
    loss_plot: bool = True  # loss_curve.png in output_dir at the end of a run


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    moe: MoeConfig = field(default_factory=MoeConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        if self.data.packing and self.train.batch_size != 1:
            raise ValueError("with data.packing=true a micro-batch is one packed row of up to "
                             "data.pack_tokens tokens: set train.batch_size=1 and size the step "
                             "with data.pack_tokens and train.grad_accum")
        if self.lora.enabled:
            from train.lora import validate_lora

            validate_lora(self.lora, self.train)  # LoRA vs freeze switches, before any model loads
            if self.distributed.expert_parallel > 1 and "experts" in self.lora.targets:
                raise ValueError("lora.targets 'experts' cannot be combined with "
                                 "distributed.expert_parallel > 1 (AutoEP replaces the expert "
                                 "modules the adapters wrap): drop 'experts' or set "
                                 "distributed.expert_parallel=1")
