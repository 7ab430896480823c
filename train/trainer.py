"""The training loop, top to bottom: set-up, data, model, optimizer, resume, steps, save.

One code path for a single process and for ``torchrun`` / ``deepspeed``-launched data-parallel
runs (DDP here; ZeRO and expert parallelism slot in at ``wrap_model``).
"""

from __future__ import annotations

import contextlib
import json
import math
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
from train.lora import apply_lora
from train.modeling import load_model, load_processor
from train.progress import ProgressLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_scheduler(optimizer, cfg):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (a packed row has none)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def wrap_model(model, dist: DistInfo, text_only_batches_possible: bool):
    if dist.world_size == 1:
        return model
    # A text-only micro-batch leaves the vision tower's trainable weights without gradients,
    # which DDP must then be told to look for (an extra graph walk per step otherwise wasted).
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
        find_unused_parameters=text_only_batches_possible)


def train(cfg: Config) -> Path:
    dist = init_distributed()
    out = Path(cfg.train.output_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
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

    # Model, adapters, optimizer.
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    model.to(dist.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train)

    start_step = 0
    resume_from = ckpt.resolve_resume(out, cfg.train.resume)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model, optimizer, scheduler, dist)
        start_step = state["step"]
        if dist.is_main:
            print(f"[train] resumed from {resume_from} at step {start_step}", flush=True)
    ddp_model = wrap_model(model, dist, any(not (s.images or s.videos) for s in samples))

    plan = BatchPlan(corpus.mixture(cfg.train.seed), cfg.train.batch_size, cfg.train.seed,
                     corpus.lengths, cfg.data.pack_tokens if cfg.data.packing else None,
                     cfg.data.group_by_length)
    sampler = StepBatchSampler(plan, cfg.train.grad_accum, dist.world_size, dist.rank,
                               cfg.train.max_steps, start_step)
    collator = TrainCollator(processor.tokenizer.pad_token_id, cfg.data.packing,
                             processor.image_processor.merge_size)
    batches = iter(make_loader(dataset, sampler, collator, cfg.data.num_workers))
    log = ProgressLog(out / "metrics.jsonl", cfg.train, start_step, enabled=dist.is_main)

    ddp_model.train()
    for step in range(start_step, cfg.train.max_steps):
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(cfg.train.grad_accum)]
        # The loss is the mean over every label token of the global batch, however it is split
        # into micro-batches and ranks; DDP averages gradients over ranks, hence the division.
        n_label = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
        items_per_rank = torch.tensor(all_reduce_sum([n_label], dist.device)[0] / dist.world_size)
        loss_sum, tokens, skipped = 0.0, 0, []
        for i, batch in enumerate(micro_batches):
            skipped += batch.pop("skipped")
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if dist.world_size == 1 or last else ddp_model.no_sync()
            with sync:
                loss = ddp_model(**batch, num_items_in_batch=items_per_rank, use_cache=False).loss
                loss.backward()
            loss_sum += loss.item() / dist.world_size
            tokens += real_tokens(batch)
        if skipped:
            records = [BadSample(**r) for r in skipped]
            bad_log.write(records, stage="encode", step=step + 1)
            for record in records:
                print(f"[data] rank {dist.rank} skipped {record}", flush=True)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss, tokens, n_skipped = all_reduce_sum([loss_sum, tokens, len(skipped)], dist.device)
        log.step(step + 1, loss=loss, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                 tokens=int(tokens), seconds=time.perf_counter() - t0, skipped=int(n_skipped))
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 \
                and step + 1 < cfg.train.max_steps:
            ckpt.save_checkpoint(out, step + 1, model, optimizer, scheduler, dist, cfg.train.keep_last)

    ckpt.save_checkpoint(out, cfg.train.max_steps, model, optimizer, scheduler, dist,
                         cfg.train.keep_last)
    final = out / "final"
    if dist.is_main:
        model.save_pretrained(str(final))
        processor.save_pretrained(str(final))
    barrier()
    log.close()
    return final

