"""How a step updates the model: plain PyTorch (one process or DDP) or DeepSpeed (ZeRO-2/3,
CPU offload, AutoEP expert parallelism). Parallelism is applied here and nowhere else:
``build_engine`` sets up DeepSpeed before the model loads (ZeRO-3 partitions weights as
``from_pretrained`` reads them), wraps the model, keeps ranks in lockstep on mixed-modality data
(``VisionKeepAlive``), and gathers ZeRO-3 shards when weights are saved.

Both engines give the training loop the same surface: ``forward(batch)``, ``backward(loss)``,
``micro_step(last)`` (gradient-accumulation boundaries), ``finish_step(skip)`` -> (grad norm,
applied), ``lrs()``, ``peak_lrs()`` / ``set_peak_lrs(lrs)`` (a changed lr on resume),
``save(dir)`` / ``load(dir)`` of the full training state, and ``save_weights(dir)``. The loss the loop passes to ``backward`` is already the mean over every
label token of the global batch, so neither engine rescales it for accumulation (DDP and ZeRO
average gradients over ranks; the loop multiplies that back by dividing ``num_items_in_batch``
by the world size).

The forward path is hooked into the model before it is wrapped (``install_forward``): the LM
loss of ``train.loss_impl`` without full logits (train/loss.py) and the Ulysses split of
``distributed.sequence_parallel`` (train/sequence_parallel.py). Both are forward hooks and a
registered attention kernel, so the wrapped module, its parameter names and every save path
stay those of the transformers / peft model.

The schedule is transformers' ``get_scheduler`` (linear warm-up, then cosine / linear /
constant), gated so that it does not move on a skipped step.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from train.distributed import DistInfo
from train.layout import DEEPSPEED, OPTIMIZER
from train.loss import LossHead
from train.safeload import load_file

# Under deepspeed/: the per-rank trainable state of a ZeRO-3 run with frozen AutoEP experts.
TRAINABLE_STATE = "trainable_state"
# The shipped DeepSpeed configs (package data, so a non-editable install has them too).
DEEPSPEED_CONFIGS = Path(__file__).resolve().parent / "deepspeed_configs"
# train.lr_schedule -> transformers.get_scheduler's name (all warm up linearly first).
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class SkippingAdamW(torch.optim.AdamW):
    """AdamW that refuses a step the loop marked bad (``skip_next``, set for every step) or
    whose gradients are not finite. The one place a step can be skipped whole under both
    engines: DeepSpeed calls this ``step()`` on its fp32 partitions (once per ZeRO-3 sub-group)
    after clipping. Ranks agree without talking: ``skip_next`` comes from an all-reduced flag,
    and a non-finite gradient anywhere makes the global clipping norm, hence every clipped
    gradient on every rank, non-finite too (DDP gradients are identical on all ranks anyway)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.skip_next = False
        self.last_skipped = False

    @torch.no_grad()
    def step(self, closure=None):
        self.last_skipped = self.skip_next or any(
            p.grad is not None and not torch.isfinite(p.grad).all()
            for g in self.param_groups for p in g["params"])
        return None if self.last_skipped else super().step(closure)


class GatedScheduler:
    """transformers' schedule, held where it is when the optimizer skipped its step. It offers
    what DeepSpeed and the loop call: ``step``, ``get_last_lr``, ``state_dict``,
    ``load_state_dict``."""

    def __init__(self, optimizer, cfg, gate: SkippingAdamW | None):
        from transformers import get_scheduler

        self.gate = gate
        self.inner = get_scheduler(SCHEDULES[cfg.lr_schedule], optimizer,
                                   num_warmup_steps=cfg.warmup_steps,
                                   num_training_steps=cfg.max_steps)

    def step(self, *args, **kwargs) -> None:
        if self.gate is not None and self.gate.last_skipped:
            return
        self.inner.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return self.inner.get_last_lr()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)

    def peak_lrs(self) -> list[float]:
        """Each parameter group's peak lr (after a resume: the checkpoint's)."""
        return list(self.inner.base_lrs)

    def set_peak_lrs(self, lrs: list[float]) -> None:
        """New peak lrs, the schedule's shape and position kept: each group's lr becomes the
        new peak times the schedule's factor at the current step."""
        self.inner.base_lrs = list(lrs)
        for group, lr, factor in zip(self.inner.optimizer.param_groups, lrs, self.inner.lr_lambdas):
            group["initial_lr"] = lr
            group["lr"] = lr * factor(self.inner.last_epoch)
        self.inner._last_lr = [group["lr"] for group in self.inner.optimizer.param_groups]


def build_scheduler(optimizer, cfg, gate: SkippingAdamW | None = None) -> GatedScheduler:
    return GatedScheduler(optimizer, cfg, gate)


def build_optimizer(param_groups, cfg) -> SkippingAdamW:
    return SkippingAdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Engine:
    """What both engines share: the model as the loop sees it (``module``), the wrapped model
    (``model``), the per-group learning rates, and the weights written by ``save_weights``."""

    module: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dist: DistInfo
    keepalive: "VisionKeepAlive | None" = None
    loss_head: LossHead | None = None  # train.loss_impl other than hf (train/loss.py)
    sp_shard = None  # train.sequence_parallel.SequenceShard under sequence parallelism
    zero3 = False

    def forward(self, batch: dict):
        if self.keepalive is not None:
            self.keepalive.arm(batch)
        if self.loss_head is not None and "labels" in batch:  # no labels: logits wanted
            return self.loss_head.forward(self.model, batch)
        return self.model(**batch, use_cache=False)

    def lrs(self) -> dict[str, float]:
        return {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def peak_lrs(self) -> list[float]:
        return self.scheduler.peak_lrs()

    def set_peak_lrs(self, lrs: list[float]) -> None:
        self.scheduler.set_peak_lrs(lrs)

    def save_weights(self, folder: Path) -> bool:
        """``save_pretrained`` of the adapter or the full model into ``folder`` (rank 0 writes);
        False when there is nothing to write there (ZeRO-3 full weights stay in the shards)."""
        if self.dist.is_main:
            unwrap(self.module).save_pretrained(str(folder))
        return True


def unwrap(model):
    """The transformers (or peft) model inside a DDP / DeepSpeed wrapper."""
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


class TorchEngine(Engine):
    """One process, or DDP over several. A step with a non-finite loss or gradient is skipped
    whole: gradients are dropped and neither the optimizer nor the schedule moves."""

    restores_weights = False  # its state files hold the optimizer only; weights are in model/
    backward_every_micro_batch = False  # a bad micro-batch's backward is simply not run
    can_skip = True

    def __init__(self, model, param_groups, cfg, dist: DistInfo):
        self.module, self.dist = model, dist
        self.model = model
        if dist.world_size > 1:
            # Every trainable parameter gets a gradient in every micro-step (VisionKeepAlive
            # covers text-only batches), so DDP needs no extra graph walk for unused ones.
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
        self.params = [p for g in param_groups for p in g["params"]]
        self.optimizer = build_optimizer(param_groups, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, gate=self.optimizer)
        self.max_grad_norm = cfg.train.max_grad_norm

    def micro_step(self, last: bool):
        if self.dist.world_size == 1 or last:
            return contextlib.nullcontext()
        return self.model.no_sync()  # gradients are all-reduced once, on the last micro-batch

    def backward(self, loss) -> None:
        loss.backward()

    def micro_done(self, last: bool, skip: bool) -> None:
        pass

    def finish_step(self, skip: bool) -> tuple[float, bool]:
        for p in self.params:
            # Unused this step (the vision tower on a text-only batch): a zero gradient, which
            # every rank of a multi-process run has (VisionKeepAlive) and DeepSpeed's flat
            # buffers always hold; with None torch's AdamW would skip the parameter, so its
            # moments and weight decay would depend on the process count.
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm).item()
        self.optimizer.skip_next = skip
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, not self.optimizer.last_skipped

    def save(self, folder: Path) -> None:
        if self.dist.is_main:
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, folder / OPTIMIZER)

    def load(self, folder: Path) -> None:
        state = load_file(folder / OPTIMIZER)  # weights_only: a crafted file cannot run code
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def deepspeed_config(cfg, dist: DistInfo, model_config) -> dict:
    """The DeepSpeed config for this run: a shipped name or a JSON path, with its "auto" values
    filled in from the training config (so batch size, accumulation, clipping and precision are
    stated once, in the YAML)."""
    name = cfg.distributed.deepspeed
    path = DEEPSPEED_CONFIGS / f"{name}.json" if (DEEPSPEED_CONFIGS / f"{name}.json").is_file() else Path(name)
    if not path.is_file():
        shipped = sorted(p.stem for p in DEEPSPEED_CONFIGS.glob("*.json"))
        raise FileNotFoundError(f"distributed.deepspeed={name!r}: no such file; give a DeepSpeed "
                                f"JSON path or one of {shipped}")
    ds = json.loads(path.read_text())
    t = cfg.train
    autos = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.max_grad_norm,
    }
    for key, value in autos.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(f"{path}: {key}={ds[key]} disagrees with the training config ({value}); "
                             f"set it to \"auto\" or change the YAML")
    ds["train_batch_size"] = t.batch_size * t.grad_accum * dist.world_size
    for precision, dtype in (("bf16", "bfloat16"), ("fp16", "float16")):
        section = ds.setdefault(precision, {"enabled": False})
        if section.get("enabled") == "auto":
            section["enabled"] = cfg.model.dtype == dtype
    optimizer = ds.get("optimizer")
    if optimizer:  # DeepSpeed builds it (e.g. its CPU Adam for offload): fill lr / decay
        params = optimizer.setdefault("params", {})
        for key, value in (("lr", t.lr), ("weight_decay", t.weight_decay)):
            if params.get(key, "auto") == "auto":
                params[key] = value
        if dist.device.type == "cpu":
            params["torch_adam"] = True  # no JIT-built fused/CPU Adam on a CPU-only machine
    else:
        # Ours is torch's AdamW plus a skip gate; DeepSpeed's allow-list checks the exact class.
        ds.setdefault("zero_allow_untested_optimizer", True)
    zero = ds.setdefault("zero_optimization", {})
    hidden = getattr(getattr(model_config, "text_config", model_config), "hidden_size", 1024)
    for key, value in (("reduce_bucket_size", hidden * hidden),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
                       ("stage3_param_persistence_threshold", 10 * hidden)):
        if zero.get(key) == "auto":
            zero[key] = value
    if dist.device.type == "cpu":
        # Offload on a CPU-only machine: DeepSpeed's CPU Adam is a JIT build; torch's AdamW does.
        ds["zero_force_ds_cpu_optimizer"] = False
    if cfg.distributed.expert_parallel > 1:
        from train.expert_parallel import expert_parallel_section

        ds["expert_parallel"] = expert_parallel_section(
            cfg.distributed.ep_preset, cfg.distributed.expert_parallel, model_config)
    return ds


class DeepSpeedEngine(Engine):
    """ZeRO-2/3 (optionally offloaded, optionally with AutoEP experts) through ``deepspeed.initialize``.

    ZeRO wants a backward in every micro-step, so a non-finite micro-batch still runs backward;
    the step is dropped by our ``SkippingAdamW``, which DeepSpeed calls on its fp32 partitions
    (and zeroes the gradients after). A DeepSpeed-built optimizer (an ``optimizer`` section in
    the JSON, e.g. its CPU Adam) cannot be told to skip: such a step stops the run instead."""

    restores_weights = True  # deepspeed/ holds the (sharded) weights too
    backward_every_micro_batch = True

    def __init__(self, model, param_groups, cfg, dist: DistInfo, ds_config: dict, hf_ds_config=None):
        import deepspeed

        self.dist, self.ds_config, self.gate = dist, ds_config, None
        # transformers' HfDeepSpeedConfig: alive, from_pretrained partitions under ZeRO-3.
        self.hf_ds_config = hf_ds_config

        def client_optimizer(params):
            self.gate = build_optimizer(params, cfg.train)
            return self.gate

        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=param_groups,
            optimizer=None if "optimizer" in ds_config else client_optimizer,
            lr_scheduler=lambda opt: build_scheduler(opt, cfg.train, gate=self.gate), config=ds_config)
        self.module = self.model.module
        # AutoEP experts that do not train (LoRA): DeepSpeed's save_checkpoint refuses them under
        # ZeRO-3, so save/load keep the trainable state only (train/expert_parallel.py).
        self.frozen_experts = []
        if ds_config.get("expert_parallel", {}).get("enabled"):
            from train.expert_parallel import autoep_frozen_experts

            self.frozen_experts = autoep_frozen_experts(self.module)

    @property
    def can_skip(self) -> bool:
        return self.gate is not None

    def leave_zero3_loading(self) -> None:
        """Let from_pretrained load plain, unpartitioned models again (e.g. the exporter's)."""
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        self.hf_ds_config = None
        unset_hf_deepspeed_config()

    @property
    def zero3(self) -> bool:
        return self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3

    def log_experts(self) -> None:
        """Under expert parallelism: how many experts each MoE layer holds on this rank."""
        from train.expert_parallel import local_expert_count

        local = local_expert_count(self.module)
        print(f"[ep] rank {self.dist.rank} holds {sorted(set(local.values()))} of "
              f"{self.module.config.text_config.num_experts} experts in each of {len(local)} MoE "
              f"layers", flush=True)

    def micro_step(self, last: bool):
        return contextlib.nullcontext()  # DeepSpeed counts micro-steps itself

    def backward(self, loss) -> None:
        self.model.backward(loss, scale_wrt_gas=False)

    def micro_done(self, last: bool, skip: bool) -> None:
        if last and self.gate is not None:
            self.gate.skip_next, self.gate.last_skipped = skip, False
        self.model.step()  # an optimizer step only at the accumulation boundary

    def finish_step(self, skip: bool) -> tuple[float, bool]:
        norm = self.model.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        # DeepSpeed itself also skips a step whose gradients are non-finite ("OVERFLOW!").
        applied = self.model.was_step_applied() and not (self.gate is not None and self.gate.last_skipped)
        return norm, applied

    def save(self, folder: Path) -> None:
        if self.frozen_experts:
            return self._save_trainable_state(folder / DEEPSPEED)
        self.model.save_checkpoint(str(folder / DEEPSPEED), tag="state")

    def load(self, folder: Path) -> None:
        if self.frozen_experts:
            return self._load_trainable_state(folder / DEEPSPEED)
        path, _ = self.model.load_checkpoint(str(folder / DEEPSPEED), tag="state",
                                             load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"{folder / DEEPSPEED}: no DeepSpeed state to resume from")

    # DeepSpeed's step counters, restored as its load_checkpoint restores them.
    COUNTERS = ("global_steps", "global_samples", "skipped_steps")

    def _trainable_state_file(self, ds_dir: Path) -> Path:
        return ds_dir / TRAINABLE_STATE / f"rank{self.dist.rank:05d}_of_{self.dist.world_size:05d}.pt"

    def _save_trainable_state(self, ds_dir: Path) -> None:
        """Under ZeRO-3 with frozen AutoEP experts: this rank's ZeRO-3 optimizer state (the fp32
        master partitions of every trainable parameter, the AdamW moments, the loss scaler), the
        schedule and DeepSpeed's step counters, as DeepSpeed's own ``*_optim_states.pt`` /
        ``*_model_states.pt`` hold them, without the frozen weights (the base's; a resume
        rebuilds them from ``model.path``). The gathered adapter is written beside it (model/)."""
        optimizer = self.model.optimizer
        optimizer.checkpoint_event_prologue()  # every parameter partitioned, as DeepSpeed does
        try:
            state = {"optimizer": optimizer.state_dict(), "lr_scheduler": self.scheduler.state_dict(),
                     "world_size": self.dist.world_size,
                     **{k: getattr(self.model, k) for k in self.COUNTERS}}
            path = self._trainable_state_file(ds_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
        finally:
            optimizer.checkpoint_event_epilogue()

    def _load_trainable_state(self, ds_dir: Path) -> None:
        path = self._trainable_state_file(ds_dir)
        if not path.is_file():
            found = sorted(p.name for p in (ds_dir / TRAINABLE_STATE).glob("*.pt"))
            what = (f"it was written by {len(found)} processes ({found[0]} ...)" if found else
                    "it holds no trainable state (a checkpoint of a run without frozen experts "
                    "under expert parallelism?)")
            raise FileNotFoundError(f"{ds_dir}: no {path.relative_to(ds_dir)} for rank "
                                    f"{self.dist.rank} of {self.dist.world_size}; {what}. Resume "
                                    f"with the process count and parallelism it was trained with")
        state = load_file(path)  # weights_only plus DeepSpeed's plain loss-scale classes
        optimizer = self.model.optimizer
        import deepspeed.comm as ds_comm

        ranks = ds_comm.get_world_size(group=optimizer.dp_process_group)
        own = ds_comm.get_rank(group=optimizer.dp_process_group)
        optimizer.checkpoint_event_prologue()
        try:
            # Copies the fp32 masters into the partitions the model computes with.
            optimizer.load_state_dict([state["optimizer"] if r == own else None for r in range(ranks)],
                                      load_optimizer_states=True, load_from_fp32_weights=True)
        finally:
            optimizer.checkpoint_event_epilogue()
        self.scheduler.load_state_dict(state["lr_scheduler"])
        for key in self.COUNTERS:
            setattr(self.model, key, state[key])

    def save_weights(self, folder: Path) -> bool:
        """Under ZeRO-3 every rank holds a shard: an adapter is gathered (collectively) and
        rank 0 writes it; full weights stay in the shards (False: ``python -m train.export``
        consolidates them)."""
        if not self.zero3:
            return super().save_weights(folder)
        module = unwrap(self.module)
        if not hasattr(module, "peft_config"):
            return False
        import deepspeed

        trainable = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if self.dist.is_main:
                # peft picks the adapter's entries; the frozen base weights here are empty shards.
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                module.save_pretrained(str(folder), state_dict=state)
        return True


class VisionKeepAlive:
    """Runs the vision tower on a blank 2x2-patch image in micro-batches without images/videos.

    ZeRO-3 gathers each module's weights collectively and DDP / ZeRO-2 reduce gradients in
    buckets, so every rank must run the same modules, in the same order, in every micro-step:
    a text-only batch on one rank and an image batch on another hangs or crashes the job. The
    model's own image path runs the token embedding, then the vision tower, then the decoder;
    a forward hook on the token embedding replays that order and ties the blank image's
    features into the graph with weight zero (gradients zero, results unchanged).
    """

    def __init__(self, model):
        self.model, self.armed = model, False
        vision = model.config.vision_config
        self.merge = vision.spatial_merge_size
        self.patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        model.get_input_embeddings().register_forward_hook(self._hook)

    def arm(self, batch: dict) -> None:
        """Call before each training forward."""
        self.armed = "pixel_values" not in batch and "pixel_values_videos" not in batch

    def _hook(self, module, args, output):
        if not self.armed:
            return None
        self.armed = False
        m = self.merge
        grid = torch.tensor([[1, m, m]], device=output.device)
        blank = torch.zeros(m * m, self.patch_dim, dtype=output.dtype, device=output.device)
        features = self.model.get_image_features(blank, grid)
        tensors = list(features.pooler_output) + [t for f in features.deepstack_features for t in f]
        return output + 0.0 * sum(t.sum() for t in tensors).to(output.dtype)


def build_engine(cfg, dist: DistInfo, build_model) -> Engine:
    """The engine for this run. ``build_model()`` loads the model and puts adapters on it or
    freezes parts; DeepSpeed is set up before it runs (under ZeRO-3, ``from_pretrained`` then
    partitions the weights as it reads them), and the model is placed and wrapped after."""
    from transformers import AutoConfig

    from train.params import param_groups

    if not cfg.distributed.deepspeed:
        model = build_model().to(dist.device)
        head, shard = install_forward(model, cfg, dist, zero3=False)
        engine = TorchEngine(model, param_groups(model, cfg.train), cfg, dist)
    else:
        import deepspeed

        model_config = AutoConfig.from_pretrained(cfg.model.path)
        ds_config = deepspeed_config(cfg, dist, model_config)
        # DeepSpeed's own communicator, on the process group init_distributed already made;
        # its config reads the world size from it.
        deepspeed.init_distributed(dist_backend="nccl" if dist.device.type == "cuda" else "gloo")
        hf_ds = None
        zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        if zero_stage == 3:
            # Alive while the model loads: from_pretrained then partitions weights as it reads them.
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds = HfDeepSpeedConfig(ds_config)
        model = build_model()
        if cfg.distributed.expert_parallel > 1:
            from train.expert_parallel import check_expert_parallel

            check_expert_parallel(model, model_config, cfg.distributed.ep_preset,
                                  cfg.distributed.expert_parallel, dist.world_size, zero_stage)
        head, shard = install_forward(model, cfg, dist, zero3=zero_stage == 3)
        engine = DeepSpeedEngine(model, param_groups(model, cfg.train), cfg, dist, ds_config, hf_ds)
        if cfg.distributed.expert_parallel > 1:
            engine.log_experts()  # AutoEP has replaced the MoE blocks by now
    engine.loss_head, engine.sp_shard = head, shard
    if dist.world_size > 1:
        engine.keepalive = VisionKeepAlive(engine.module)
    return engine


def install_forward(model, cfg, dist: DistInfo, zero3: bool) -> tuple:
    """The forward path of ``train.loss_impl`` and ``distributed.sequence_parallel``, hooked
    into the model before DDP / DeepSpeed wrap it (train/loss.py, train/sequence_parallel.py):
    (the ``LossHead``, or None for transformers' own loss or a preference objective's logits;
    the ``SequenceShard``, or None without sequence parallelism)."""
    shard = None
    if dist.sequence_parallel > 1:
        from train.sequence_parallel import SequenceShard

        shard = SequenceShard.install(model, dist.sp_group)
        if cfg.train.objective != "sft":  # DPO reads its slice's logits (dpo_step.py)
            return None, shard
    return LossHead.install(model, cfg.train.loss_impl, cfg.train.loss_chunk_tokens, dist.device,
                            shard=shard, zero3=zero3), shard
