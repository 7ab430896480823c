"""Training config: typed sections that check themselves (see data/configio.py for loading)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data.config import DataConfig
from train.lora import TARGET_PRESETS


@dataclass
class ModelConfig:
    path: str = field(default="", metadata={
        "help": "a hub id or a local checkpoint folder; the model class comes from its "
                "config.json (required)"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "dtype the weights are loaded and trained in; float16 only under DeepSpeed "
                "(which scales the loss)"})
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = field(
        default="sdpa", metadata={"help": "transformers attention kernel"})
    experts_implementation: Literal["grouped_mm", "batched_mm", "eager"] | None = field(
        default=None, metadata={
            "help": "MoE expert kernels (transformers' experts_implementation): grouped_mm is "
                    "one grouped GEMM per layer, eager the per-expert loop; null: the "
                    "checkpoint's default"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass: less memory, slower steps"})
    vision_gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "the same for the vision tower's blocks on their own (gradient_checkpointing "
                "then covers the language model's layers only); null: as "
                "gradient_checkpointing"})
    activation_offload: bool = field(default=False, metadata={
        "help": "keep the inputs of the checkpointed layers (text and/or vision, as the two "
                "switches above say) in CPU memory between forward and backward (for very long "
                "sequences on a GPU; on a CPU it changes nothing)"})
    tiled_mlp_tokens: int = field(default=0, metadata={
        "help": "run each language-model MLP over tiles of this many tokens, recomputed in the "
                "backward pass, so a long row never holds its full intermediate activation; "
                "0: off"})
    patch_embed: Literal["auto", "conv3d", "linear"] = field(default="auto", metadata={
        "help": "vision patch embedding: the checkpoint's Conv3d, or the same weights as one "
                "matmul over flattened patches (same weights and checkpoints, outputs equal to "
                "~1e-6; Conv3d is slow on recent torch); auto: linear, which was faster in every "
                "measurement (3-8x on CPU here, 10-50x reported on GPU)"})

    def __post_init__(self):
        if self.activation_offload and not (self.gradient_checkpointing
                                            or self.vision_gradient_checkpointing):
            raise ValueError("model.activation_offload offloads the inputs gradient checkpointing "
                             "keeps: set model.gradient_checkpointing=true (or "
                             "model.vision_gradient_checkpointing=true) too")
        if self.tiled_mlp_tokens < 0:
            raise ValueError(f"model.tiled_mlp_tokens must be >= 0 (0: off), got "
                             f"{self.tiled_mlp_tokens}")
        if not self.path:
            raise ValueError("model.path is required: a checkpoint folder or hub id, "
                             "e.g. model.path=Qwen/Qwen3-VL-8B-Instruct")


@dataclass
class LoraConfig:
    enabled: bool = field(default=True, metadata={
        "help": "train LoRA adapters; false: full fine-tuning of the unfrozen parts"})
    r: int = field(default=16, metadata={"help": "adapter rank (> 0)"})
    alpha: int = field(default=32, metadata={
        "help": "adapter scale: updates are scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input"})
    targets: list[str] = field(default_factory=lambda: ["llm_attn", "llm_mlp"], metadata={
        "help": "where adapters go, presets of train.lora.TARGET_PRESETS: llm_attn, llm_mlp, "
                "experts (MoE), vision, merger"})
    use_rslora: bool = field(default=False, metadata={
        "help": "rank-stabilized LoRA: scale by alpha / sqrt(r) instead of alpha / r"})
    use_dora: bool = field(default=False, metadata={
        "help": "weight-decomposed LoRA (peft; not for fused MoE experts)"})
    modules_to_save: list[str] = field(default_factory=list, metadata={
        "help": "whole modules trained next to the adapters and saved with them, e.g. [lm_head]"})

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in TARGET_PRESETS]
        if unknown:
            raise ValueError(f"lora.targets: unknown preset {unknown[0]!r}; "
                             f"choose from {sorted(TARGET_PRESETS)}")
        if self.enabled and (self.r <= 0 or not self.targets):
            raise ValueError("lora.r must be > 0 and lora.targets non-empty "
                             "(or set lora.enabled=false for full fine-tuning)")
        if self.enabled and self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0 (adapter updates are scaled by alpha / r: "
                             f"0 means they do nothing), got {self.alpha}; e.g. lora.alpha="
                             f"{2 * max(self.r, 1)} (twice lora.r)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    output_dir: str = field(default="outputs/train", metadata={
        "help": "checkpoints, metrics.jsonl and plots go here"})
    seed: int = field(default=0, metadata={
        "help": "random seed: adapter init, dropout and the sample order"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps to train"})
    batch_size: int = field(default=1, metadata={
        "help": "samples per process per micro-step (1 with data.packing: one packed row)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    objective: Literal["sft", "dpo", "grpo"] = field(default="sft", metadata={
        "help": "sft: next-token loss on the assistant replies; dpo: preference pairs "
                "(chosen / rejected replies, the dpo section), the reference being the model "
                "with its LoRA adapters off, or a frozen copy for full fine-tuning; grpo: "
                "completions sampled from the model and rewarded by the eval scorers (the grpo "
                "section; the data's replies are the references the rewards compare with)"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)"})
    loss_impl: Literal["auto", "hf", "chunked", "liger", "cce"] = field(default="auto", metadata={
        "help": "how the LM head and cross-entropy run: hf (transformers' loss over the full "
                "[tokens, vocab] logits), chunked (plain torch, loss_chunk_tokens rows at a time, "
                "never the full logits), liger / cce (fused GPU kernels from liger-kernel / "
                "cut-cross-entropy); auto: a fused kernel on CUDA when installed and lm_head is "
                "a plain, unsharded Linear, else chunked (train/loss.py)"})
    loss_chunk_tokens: int = field(default=2048, metadata={
        "help": "labelled rows whose [rows, vocab] float32 logits are alive at once with "
                "loss_impl chunked (> 0; unlabelled rows are never projected)"})
    lr_schedule: Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "decay after warmup, over max_steps (all warm up linearly first)"})
    warmup_steps: int = field(default=0, metadata={
        "help": "steps of linear warmup from 0 to lr, in [0, max_steps)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "clip gradients to this global norm (> 0)"})
    log_every: int = field(default=10, metadata={
        "help": "steps between rows of metrics.jsonl (and console / tracker logs)"})
    save_every: int = field(default=0, metadata={
        "help": "steps between checkpoints; 0: only at the end"})
    keep_last: int = field(default=2, metadata={
        "help": "checkpoints kept; older ones are deleted"})
    keep_best: bool = field(default=False, metadata={
        "help": "also keep the checkpoint with the lowest train loss since the last save"})
    resume: str | None = field(default=None, metadata={
        "help": "auto (the latest complete checkpoint in output_dir; none: start at step 0) or "
                "a checkpoint path; null: start fresh, in an output_dir no run has used. A "
                "checkpoint of another model, LoRA shape or data is refused; a changed train.lr "
                "restarts the schedule's peak from the resumed step"})
    resume_allow_changes: list[Literal["model.path", "data"]] = field(
        default_factory=list, metadata={
            "help": "what may differ from the resumed checkpoint's config (a moved base model "
                    "folder, data moved or extended); a listed difference is printed, not "
                    "refused. The LoRA shape can never change on resume"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh in an output_dir a previous run used, deleting that run's "
                "config.json, metrics, checkpoints and final/ first (without it such a folder "
                "is refused unless train.resume is set)"})
    progress: bool = field(default=True, metadata={"help": "show a console progress bar"})
    # Full fine-tuning trains every unfrozen part; LoRA puts adapters only on unfrozen parts
    # (a lora.targets preset inside a frozen part is an error, not ignored).
    freeze_vision: bool = field(default=False, metadata={
        "help": "freeze the vision tower's patch embedding, position table and blocks"})
    freeze_merger: bool = field(default=False, metadata={
        "help": "freeze the merger and the deepstack mergers"})
    freeze_llm: bool = field(default=False, metadata={
        "help": "freeze the language model and lm_head"})
    vision_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the vision tower; null: train.lr"})
    merger_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the mergers; null: train.lr"})
    on_nan: Literal["skip", "stop"] = field(default="skip", metadata={
        "help": "a step whose loss or gradient norm is NaN/inf: skip it (no update, counted) "
                "or stop the run"})
    max_nan_steps: int = field(default=10, metadata={
        "help": "with on_nan=skip: still stop after this many such steps in a row"})
    collapse_steps: int = field(default=20, metadata={
        "help": "warn (console, and collapsed=true in metrics.jsonl) when this many steps in a "
                "row have a gradient norm of exactly 0 or a loss unchanged to 6 digits, as a "
                "far too high lr does; 0: off. The run goes on"})

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"train.max_grad_norm must be > 0 (gradients are clipped to this "
                             f"global norm), got {self.max_grad_norm}; e.g. train.max_grad_norm=1.0")
        if self.save_every < 0:
            raise ValueError(f"train.save_every must be >= 0 (steps between checkpoints; 0: "
                             f"only at the end), got {self.save_every}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_nan_steps < 1 or self.collapse_steps < 0:
            raise ValueError(f"train.max_nan_steps must be >= 1 and train.collapse_steps >= 0 "
                             f"(0: off), got {self.max_nan_steps} and {self.collapse_steps}")
        if self.overwrite and self.resume:
            raise ValueError("train.overwrite=true deletes the checkpoints train.resume would "
                             "continue from: set only one of them")
        for name in ("vision_lr", "merger_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0 (or null for train.lr)")
        if self.freeze_vision and self.freeze_merger and self.freeze_llm:
            raise ValueError("train.freeze_vision, freeze_merger and freeze_llm are all true: "
                             "nothing would train; unfreeze at least one part")
        if self.loss_chunk_tokens <= 0:
            raise ValueError(f"train.loss_chunk_tokens must be > 0, got {self.loss_chunk_tokens}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ValueError(f"train.warmup_steps must be in [0, max_steps), got {self.warmup_steps}")


@dataclass
class DpoConfig:
    """Direct preference optimisation (train.objective: dpo; train/objectives/dpo.py)."""

    beta: float = field(default=0.1, metadata={
        "help": "strength of the pull towards the reference model (> 0): rewards are beta x the "
                "policy/reference log-ratio of a reply"})
    loss_type: Literal["sigmoid", "ipo"] = field(default="sigmoid", metadata={
        "help": "sigmoid: DPO (Rafailov et al.); ipo: IPO (Azar et al.), length-normalised"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "cDPO: the probability that a pair's preference label is wrong, in [0, 0.5) "
                "(sigmoid only)"})
    sft_weight: float = field(default=0.0, metadata={
        "help": "add this times the chosen replies' NLL (RPO-style anchor), >= 0"})
    precompute_reference: bool = field(default=False, metadata={
        "help": "compute every pair's reference log-probs once, before the first step, into "
                "output_dir/reference_logps.json (read back on resume): no reference forward "
                "per step, and full fine-tuning needs no frozen copy (so it runs under ZeRO-3)"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}; e.g. dpo.beta=0.1")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("dpo.label_smoothing (cDPO) applies to loss_type sigmoid only")
        if self.sft_weight < 0:
            raise ValueError(f"dpo.sft_weight must be >= 0, got {self.sft_weight}")


@dataclass
class GrpoConfig:
    """GRPO with verifiable rewards (train.objective: grpo; train/objectives/grpo_step.py)."""

    group_size: int = field(default=4, metadata={
        "help": "completions sampled per prompt (>= 2): advantages compare them"})
    max_new_tokens: int = field(default=128, metadata={"help": "longest completion"})
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature (> 0)"})
    top_p: float = field(default=1.0, metadata={"help": "rollout nucleus sampling, in (0, 1]"})
    top_k: int = field(default=0, metadata={"help": "rollout top-k (0: off)"})
    style: Literal["grpo", "dr_grpo", "dapo", "gspo"] = field(default="grpo", metadata={
        "help": "normalisation: grpo (per-completion token mean, std-scaled advantages), dr_grpo "
                "(constant normaliser, no std), dapo (token mean over the batch, clip-higher), "
                "gspo (sequence-level ratio)"})
    kl_coef: float = field(default=0.0, metadata={
        "help": "weight of the k3 KL to the reference (LoRA: adapters off), >= 0"})
    eps_low: float | None = field(default=None, metadata={
        "help": "lower clip range; null: the style's"})
    eps_high: float | None = field(default=None, metadata={
        "help": "upper clip range; null: the style's"})
    rewards: dict[str, float] = field(default_factory=lambda: {"synthetic_grounding": 1.0},
                                      metadata={
        "help": "reward name -> weight: the eval scorers (task:<eval task>, grounding_iou, anls, "
                "exact_match, mathvista, mmmu, docvqa_anls, refcoco_acc50, "
                "synthetic_grounding), think_format, or module:function"})
    rollout_backend: Literal["hf", "vllm"] = field(default="hf", metadata={
        "help": "who samples the completions: hf (transformers generate on the policy; CPU or "
                "GPU) or vllm (an engine per rank on the same GPU, sent the policy's weights "
                "before each step; needs vLLM and CUDA)"})
    vllm: dict = field(default_factory=dict, metadata={
        "help": "vllm.LLM arguments for rollout_backend=vllm, e.g. {gpu_memory_utilization: "
                "0.3, max_model_len: 8192} (defaults: train/objectives/rollout_vllm.py)"})

    def __post_init__(self):
        check_grpo(self)


def check_grpo(cfg) -> None:
    """One-line errors for GRPO settings that cannot work (any object with GrpoConfig's fields)."""
    from train.objectives.grpo import STYLES

    if cfg.style not in STYLES:
        raise ValueError(f"grpo.style must be one of {sorted(STYLES)}, got {cfg.style!r}")
    if int(cfg.group_size) < 2:
        raise ValueError(f"grpo.group_size must be >= 2 (advantages compare completions of one "
                         f"prompt), got {cfg.group_size}")
    if int(cfg.max_new_tokens) < 1:
        raise ValueError(f"grpo.max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    if not cfg.temperature > 0:
        raise ValueError(f"grpo.temperature must be > 0 (rollouts sample), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"grpo.top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.kl_coef < 0:
        raise ValueError(f"grpo.kl_coef must be >= 0, got {cfg.kl_coef}")
    if not cfg.rewards:
        raise ValueError("grpo.rewards is empty: name at least one reward, e.g. "
                         "grpo.rewards={synthetic_grounding: 1.0}")


@dataclass
class MoeConfig:
    """Router losses and statistics for Qwen3-VL-MoE (ignored keys on a dense model are errors)."""

    aux_loss_coef: float | None = field(default=None, metadata={
        "help": "load-balancing loss weight (>= 0); null: the checkpoint's"})
    z_loss_coef: float = field(default=0.0, metadata={
        "help": "router z-loss weight (mean squared logsumexp of router logits), >= 0"})
    log_expert_load: bool = field(default=True, metadata={
        "help": "log per-layer expert token counts in metrics.jsonl"})

    def __post_init__(self):
        if (self.aux_loss_coef or 0) < 0 or self.z_loss_coef < 0:
            raise ValueError("moe.aux_loss_coef and moe.z_loss_coef must be >= 0")


@dataclass
class DistributedConfig:
    deepspeed: str | None = field(default=None, metadata={
        "help": "a DeepSpeed JSON config: a path, or a name shipped in train/deepspeed_configs/ "
                "(zero2, zero3, zero3_offload); null: plain DDP (or a single process)"})
    expert_parallel: int = field(default=1, metadata={
        "help": "expert-parallel group size (DeepSpeed AutoEP; needs ZeRO-3 and a MoE model); "
                "1: off"})
    sequence_parallel: int = field(default=1, metadata={
        "help": "Ulysses sequence-parallel group size: one sample's merged text+visual sequence "
                "is split over this many consecutive ranks (attention heads exchanged "
                "all-to-all), which all read the same micro-batches, so the data-parallel "
                "degree is processes / this; must divide the number of processes and the "
                "attention heads; needs model.attn_implementation=sdpa and train.loss_impl "
                "other than hf; 1: off"})
    ep_preset: str = field(default="qwen3_vl_moe", metadata={
        "help": "which AutoEP module map to use (train/expert_parallel.py)"})

    def __post_init__(self):
        if self.expert_parallel < 1:
            raise ValueError("distributed.expert_parallel must be >= 1")
        if self.sequence_parallel < 1:
            raise ValueError("distributed.sequence_parallel must be >= 1 (1: off)")
        if self.expert_parallel > 1 and not self.deepspeed:
            raise ValueError("distributed.expert_parallel > 1 needs DeepSpeed ZeRO-3: set "
                             "distributed.deepspeed=zero3 (or a ZeRO-3 JSON)")


@dataclass
class LoggingConfig:
    report_to: list[Literal["wandb", "tensorboard"]] = field(default_factory=list, metadata={
        "help": "trackers that also get the metrics, e.g. [wandb, tensorboard]"})
    wandb_project: str = field(default="qwen3vl-tune", metadata={"help": "wandb project name"})
    wandb_mode: Literal["offline", "online"] = field(default="offline", metadata={
        "help": "offline: sync later with `wandb sync`"})
    run_name: str | None = field(default=None, metadata={
        "help": "the run's name in the trackers; null: the output_dir's name"})
    loss_plot: bool = field(default=True, metadata={
        "help": "draw loss_curve.png in output_dir at the end of a run"})


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the checkpoint to fine-tune and how to load it"})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "what to train on, and how samples are budgeted and batched"})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={
        "help": "LoRA adapters (or full fine-tuning with enabled=false)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "the optimization loop, checkpoints and which parts learn"})
    dpo: DpoConfig = field(default_factory=DpoConfig, metadata={
        "help": "the DPO loss (with train.objective: dpo)"})
    grpo: GrpoConfig = field(default_factory=GrpoConfig, metadata={
        "help": "rollouts, rewards and the policy loss (with train.objective: grpo)"})
    moe: MoeConfig = field(default_factory=MoeConfig, metadata={
        "help": "router losses and statistics (Qwen3-VL-MoE only)"})
    distributed: DistributedConfig = field(default_factory=DistributedConfig, metadata={
        "help": "DeepSpeed and expert parallelism (launch with torchrun or deepspeed)"})
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={
        "help": "trackers and plots"})

    def __post_init__(self):
        if self.model.dtype == "float16" and not self.distributed.deepspeed:
            raise ValueError("model.dtype=float16 needs loss scaling and fp32 master weights, "
                             "which the plain PyTorch engine does not have (its losses go NaN "
                             "within steps): use model.dtype: bfloat16, or DeepSpeed "
                             "(distributed.deepspeed), which scales fp16 losses")
        if self.data.packing and self.train.batch_size != 1:
            raise ValueError("with data.packing=true a micro-batch is one packed row of up to "
                             "data.pack_tokens tokens: set train.batch_size=1 and size the step "
                             "with data.pack_tokens and train.grad_accum")
        if self.distributed.sequence_parallel > 1:
            if self.model.attn_implementation != "sdpa":
                raise ValueError(f"distributed.sequence_parallel > 1 runs its own all-to-all "
                                 f"attention over sdpa; model.attn_implementation="
                                 f"{self.model.attn_implementation} is not supported with it: set "
                                 f"model.attn_implementation=sdpa")
            if getattr(self.train, "objective", "sft") == "grpo":
                raise ValueError("train.objective=grpo samples its completions with generate, "
                                 "which does not run split over ranks: set "
                                 "distributed.sequence_parallel=1")
            if self.train.objective == "dpo" and self.dpo.precompute_reference:
                raise ValueError("dpo.precompute_reference reads whole-sequence logits, and "
                                 "under distributed.sequence_parallel > 1 each rank has a slice: "
                                 "set dpo.precompute_reference=false (LoRA's reference is the "
                                 "split model with its adapters off)")
            if self.train.loss_impl == "hf":
                raise ValueError("train.loss_impl=hf shifts labels inside each rank's slice, which "
                                 "is wrong under distributed.sequence_parallel > 1: set "
                                 "train.loss_impl=chunked (or auto)")
        if self.train.objective in ("dpo", "grpo"):
            self._check_preference_objective()
        if self.model.tiled_mlp_tokens and self.distributed.expert_parallel > 1:
            raise ValueError("model.tiled_mlp_tokens does not reach the MoE blocks AutoEP puts in "
                             "place (distributed.expert_parallel > 1): set "
                             "model.tiled_mlp_tokens=0 or distributed.expert_parallel=1")
        if self.lora.enabled:
            from train.lora import validate_lora

            validate_lora(self.lora, self.train)  # LoRA vs freeze switches, before any model loads
            if self.distributed.expert_parallel > 1 and "experts" in self.lora.targets:
                raise ValueError("lora.targets 'experts' cannot be combined with "
                                 "distributed.expert_parallel > 1 (AutoEP replaces the expert "
                                 "modules the adapters wrap): drop 'experts' or set "
                                 "distributed.expert_parallel=1")

    def _check_preference_objective(self) -> None:
        """What DPO / GRPO do not combine with yet; they read logits for their own log-probs
        instead of the LM loss."""
        objective = self.train.objective
        if self.train.loss_impl not in ("auto", "hf"):
            raise ValueError(f"train.objective={objective} computes per-token log-probs itself; "
                             f"train.loss_impl={self.train.loss_impl} applies to sft: remove it")
        self.train.loss_impl = "hf"  # no LM loss head: the objective reads the logits
        if self.data.prepared:
            raise ValueError(f"data.prepared caches encoded SFT samples: remove data.prepared "
                             f"with train.objective={objective}")
        if objective == "grpo" and self.grpo.rollout_backend == "vllm":
            from train.objectives.rollout_vllm import check_vllm_backend

            check_vllm_backend(self)
        if objective == "grpo" and self.data.packing:
            raise ValueError("train.objective=grpo batches prompts and their sampled "
                             "completions, not packed rows: set data.packing=false")
