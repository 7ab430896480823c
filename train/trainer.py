"""The training loop, top to bottom: set-up, data, model, engine, resume, steps, save.

One code path for a single process, ``torchrun`` / ``deepspeed``-launched DDP, and DeepSpeed
ZeRO-2/3 (with CPU offload and AutoEP expert parallelism): everything that differs between them
sits behind the engine (train/engine.py).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from data.configio import to_dict
from data.corpus import load_corpus
from data.samples import BadSample, BadSampleFile, BadSampleLog
from train import checkpoint as ckpt
from train.config import Config
from train.data import BatchPlan, EncodedDataset, StepBatchSampler, TrainCollator, make_loader
from train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from train.engine import DeepSpeedEngine, TorchEngine, deepspeed_config
from train.lora import apply_lora
from train.modeling import load_model, load_processor
from train.progress import ProgressLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (a packed row has none)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def vision_keepalive(model, batch: dict):
    """Zero that still runs the vision tower on a micro-batch without images or videos.

    ZeRO-3 gathers each module's weights collectively, DDP and ZeRO-2 reduce gradients in
    buckets: every rank must run the same modules in every micro-step, or a text-only batch on
    one rank and an image batch on another hangs the job. A 2x2-patch blank image costs little.
    """
    if "pixel_values" in batch or "pixel_values_videos" in batch:
        return 0.0
    vision = getattr(model, "config").vision_config
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    merge = vision.spatial_merge_size
    device = batch["input_ids"].device
    dtype = next(p for p in model.parameters()).dtype
    grid = torch.tensor([[1, merge, merge]], device=device)
    out = model.get_image_features(torch.zeros(merge * merge, patch, dtype=dtype, device=device), grid)
    tensors = list(out.pooler_output) + [t for feats in out.deepstack_features for t in feats]
    return sum(t.float().sum() for t in tensors) * 0.0


def describe_batch(samples: list[dict]) -> str:
    return ", ".join(f"{s['id']} ({s['tokens']} tokens, {s['visual_tokens']} visual)" for s in samples)


def injected_nan_steps() -> set[int]:
    """Fault injection for tests: QWEN3VL_INJECT_NAN_STEPS="3,5" makes the last rank's loss NaN
    at those (1-based) steps."""
    raw = os.environ.get("QWEN3VL_INJECT_NAN_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


def build_model(cfg: Config, dist: DistInfo):
    """Model (+ adapters), its trainable parameter groups, and the engine that trains it."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(cfg.model.path)
    ds_config = deepspeed_config(cfg, dist, model_config) if cfg.distributed.deepspeed else None
    zero_stage = (ds_config or {}).get("zero_optimization", {}).get("stage", 0)
    hf_ds = None
    if zero_stage == 3:
        # Alive while the model loads: from_pretrained then partitions weights as it reads them.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                       experts_implementation=cfg.model.experts_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.distributed.expert_parallel > 1:
        from train.expert_parallel import check_expert_parallel

        check_expert_parallel(model, model_config, cfg.distributed.ep_preset,
                              cfg.distributed.expert_parallel, dist.world_size, zero_stage)
    if ds_config is None:
        model.to(dist.device)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]
    if ds_config is not None:
        engine = DeepSpeedEngine(model, groups, cfg, dist, ds_config)
    else:
        engine = TorchEngine(model, groups, cfg, dist, find_unused=False)
    engine.hf_deepspeed_config = hf_ds
    return engine


def train(cfg: Config) -> Path:
    dist = init_distributed()
    out = Path(cfg.train.output_dir)
    run_config = to_dict(cfg)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run_config, indent=2))
    seed_everything(cfg.train.seed)

    # Data: read and check every record up front, so a bad file fails now, not at step 9000.
    bad = BadSampleLog(cfg.data.on_bad_sample)
    processor = load_processor(cfg.model.path)
    corpus = load_corpus(cfg.data, processor, bad, plan=cfg.data.plan_ahead, progress=dist.is_main)
    samples = corpus.samples
    bad_log = BadSampleFile(out / "bad_samples.jsonl", dist.rank)
    if bad.records:
        if dist.is_main:
            bad_log.write(bad.records, stage="load")
        bad.check_fraction(len(samples), cfg.data.max_bad_fraction)
        if dist.is_main:
            print(f"[data] skipping {bad.report(len(samples))}\n[data] all of them: "
                  f"{bad_log.path}", flush=True)
    if dist.is_main:
        print(f"[data] {len(samples)} samples ({corpus.summary()})", flush=True)
    dataset = EncodedDataset(corpus, cfg.data.on_bad_sample,
                             corpus.lengths if cfg.data.packing else None)

    engine = build_model(cfg, dist)
    model = engine.module

    start_step = 0
    resume_from = ckpt.resolve_resume(out, cfg.train.resume)
    if resume_from is not None:
        start_step = ckpt.load_checkpoint(resume_from, engine, dist)["step"]
        if dist.is_main:
            print(f"[train] resumed from {resume_from} at step {start_step}", flush=True)

    plan = BatchPlan(corpus.mixture(cfg.train.seed), cfg.train.batch_size, cfg.train.seed,
                     corpus.lengths, cfg.data.pack_tokens if cfg.data.packing else None,
                     cfg.data.group_by_length)
    sampler = StepBatchSampler(plan, cfg.train.grad_accum, dist.world_size, dist.rank,
                               cfg.train.max_steps, start_step)
    merge = processor.image_processor.merge_size
    collator = TrainCollator(processor.tokenizer.pad_token_id, cfg.data.packing, merge)
    batches = iter(make_loader(dataset, sampler, collator, cfg.data.num_workers))
    log = ProgressLog(out / "metrics.jsonl", cfg.train, start_step, enabled=dist.is_main)
    keepalive = dist.world_size > 1  # see vision_keepalive
    nan_at, nan_in_a_row, loss_since_save = injected_nan_steps(), 0, []

    engine.model.train()
    for step in range(start_step, cfg.train.max_steps):
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(cfg.train.grad_accum)]
        # The loss is the mean over every label token of the global batch, however it is split
        # into micro-batches and ranks; DDP/ZeRO average gradients over ranks, hence the division.
        n_label = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
        items_per_rank = torch.tensor(all_reduce_sum([n_label], dist.device)[0] / dist.world_size)
        loss_sum, tokens, visual, skipped, non_finite = 0.0, 0, 0, [], False
        for i, batch in enumerate(micro_batches):
            skipped += batch.pop("skipped")
            described = batch.pop("samples")
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            tokens += real_tokens(batch)
            visual += sum(d["visual_tokens"] for d in described)
            if non_finite and not isinstance(engine, DeepSpeedEngine):
                continue  # the step is dropped anyway
            with engine.micro_step(last=i == len(micro_batches) - 1):
                try:
                    loss = engine.forward({**batch, "num_items_in_batch": items_per_rank}).loss
                    if keepalive:
                        loss = loss + vision_keepalive(model, batch)
                    if step + 1 in nan_at and dist.rank == dist.world_size - 1:
                        loss = loss * float("nan")
                    # Every rank must take the same branch (ZeRO and DDP communicate in backward).
                    bad_here = all_reduce_sum([float(not torch.isfinite(loss).item())], dist.device)[0] > 0
                    if not bad_here:
                        engine.backward(loss)
                        loss_sum += loss.item() / dist.world_size
                    non_finite |= bad_here
                except torch.cuda.OutOfMemoryError as e:
                    raise RuntimeError(
                        f"out of GPU memory at step {step + 1}, micro-batch {i + 1} on rank "
                        f"{dist.rank}; the batch holds {describe_batch(described)}. Lower "
                        f"data.max_seq_len, data.vision.max_pixels, train.batch_size or "
                        f"data.pack_tokens, or set model.gradient_checkpointing=true") from e
            engine.micro_done()
        if skipped:
            records = [BadSample(**r) for r in skipped]
            bad_log.write(records, stage="encode", step=step + 1)
            for record in records:
                print(f"[data] rank {dist.rank} skipped {record}", flush=True)
        grad_norm, applied = engine.finish_step(skip=non_finite)
        bad_step = non_finite or not np.isfinite(grad_norm)
        if bad_step:
            nan_in_a_row += 1
            where = "loss" if non_finite else "gradient norm"
            message = f"[train] step {step + 1}: non-finite {where}"
            if cfg.train.on_nan == "stop" or nan_in_a_row >= cfg.train.max_nan_steps or \
                    (applied and not non_finite):
                reason = ("train.on_nan=stop" if cfg.train.on_nan == "stop" else
                          "the update was already applied by DeepSpeed" if applied and not non_finite
                          else f"{nan_in_a_row} such steps in a row (train.max_nan_steps)")
                raise FloatingPointError(f"{message}; stopping ({reason}). Resume from the last "
                                         f"checkpoint with a lower train.lr or check the data of "
                                         f"this step.")
            if dist.is_main:
                print(f"{message}; step skipped (train.on_nan=skip)", flush=True)
        else:
            nan_in_a_row = 0
            loss_since_save.append(loss_sum)

        loss, tokens, n_skipped = all_reduce_sum([loss_sum, tokens, len(skipped)], dist.device)
        lr = next(iter(engine.lrs().values()))
        log.step(step + 1, loss=loss if not bad_step else float("nan"), lr=lr, grad_norm=grad_norm,
                 tokens=int(tokens), seconds=time.perf_counter() - t0, skipped=int(n_skipped))
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 \
                and step + 1 < cfg.train.max_steps:
            ckpt.save_checkpoint(out, step + 1, engine, dist, cfg.train.keep_last, cfg.train.keep_best,
                                 float(np.mean(loss_since_save)) if loss_since_save else None, run_config)
            loss_since_save = []

    ckpt.save_checkpoint(out, cfg.train.max_steps, engine, dist, cfg.train.keep_last,
                         cfg.train.keep_best,
                         float(np.mean(loss_since_save)) if loss_since_save else None, run_config)
    final = out / "final"
    save_final(engine, processor, final, dist)
    barrier()
    log.close()
    return final


def save_final(engine, processor, final: Path, dist: DistInfo) -> None:
    """final/: what eval loads - the adapter, or the full model (gathered from ZeRO-3 shards)."""
    module = ckpt.unwrap(engine.module)
    if engine.zero3:
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad] \
            if hasattr(module, "peft_config") else list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if dist.is_main:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                if hasattr(module, "peft_config"):
                    from peft import get_peft_model_state_dict

                    state = get_peft_model_state_dict(module, state_dict=state)
                module.save_pretrained(str(final), state_dict=state)
                if not hasattr(module, "peft_config") and module.config.model_type == "qwen3_vl_moe":
                    from train.debug_models import write_experts_in_hub_layout

                    write_experts_in_hub_layout(final)  # loadable under ZeRO-3/EP too
    elif dist.is_main:
        module.save_pretrained(str(final))
    if dist.is_main:
        processor.save_pretrained(str(final))
