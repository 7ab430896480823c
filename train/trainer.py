"""The training loop, top to bottom: set-up, data, model, engine, resume, steps, save.

One code path for a single process, ``torchrun`` / ``deepspeed``-launched DDP, and DeepSpeed
ZeRO-2/3 (with CPU offload and AutoEP expert parallelism): everything that differs between them
sits behind the engine (train/engine.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from data.configio import to_dict
from data.corpus import load_corpus
from data.samples import BadSampleFile, BadSampleLog
from train import checkpoint as ckpt
from train.config import Config
from train.data import BatchPlan, EncodedDataset, StepBatchSampler, TrainCollator, make_loader
from train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from train.engine import DeepSpeedEngine, TorchEngine, VisionKeepAlive, deepspeed_config
from train.flops import StepFlops, peak_flops
from train.lora import apply_lora
from train.modeling import DTYPES, load_model, load_processor
from train.moe import RouterLosses, load_summary
from train.params import freeze_parts, param_groups
from train.progress import ProgressLog
from train.trackers import check_trackers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (a packed row has none)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def describe_batch(samples: list[dict]) -> str:
    return ", ".join(f"{s['id']} ({s['tokens']} tokens, {s['visual_tokens']} visual)" for s in samples)


def injected_faults() -> tuple[set[int], int | None]:
    """Fault injection for tests and benchmarks, on the last rank: QWEN3VL_INJECT_NAN_STEPS="3,5"
    makes the loss NaN at those (1-based) steps; QWEN3VL_KILL_AT_STEP=4 SIGKILLs the process as
    step 4 begins (no cleanup, as the OOM killer or a preempted node would)."""
    nan = {int(x) for x in os.environ.get("QWEN3VL_INJECT_NAN_STEPS", "").split(",") if x.strip()}
    kill = os.environ.get("QWEN3VL_KILL_AT_STEP")
    return nan, int(kill) if kill else None


def build_model(cfg: Config, dist: DistInfo):
    """Model (+ adapters), its trainable parameter groups, and the engine that trains it."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(cfg.model.path)
    ds_config = deepspeed_config(cfg, dist, model_config) if cfg.distributed.deepspeed else None
    zero_stage = (ds_config or {}).get("zero_optimization", {}).get("stage", 0)
    hf_ds = None
    if ds_config is not None:
        import deepspeed

        # DeepSpeed's own communicator, on the process group init_distributed already made;
        # its config reads the world size from it.
        deepspeed.init_distributed(dist_backend="nccl" if dist.device.type == "cuda" else "gloo")
    if zero_stage == 3:
        # Alive while the model loads: from_pretrained then partitions weights as it reads them.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds_config)
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                       experts_implementation=cfg.model.experts_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, cfg.train)  # adapters only on unfrozen parts
    else:
        freeze_parts(model, cfg.train)
    if cfg.distributed.expert_parallel > 1:
        from train.expert_parallel import check_expert_parallel

        check_expert_parallel(model, model_config, cfg.distributed.ep_preset,
                              cfg.distributed.expert_parallel, dist.world_size, zero_stage)
    if ds_config is None:
        model.to(dist.device)
    groups = param_groups(model, cfg.train)
    if ds_config is not None:
        return DeepSpeedEngine(model, groups, cfg, dist, ds_config, hf_ds)
    return TorchEngine(model, groups, cfg, dist)


def train(cfg: Config) -> Path:
    dist = init_distributed()
    check_trackers(cfg.logging.report_to)  # a missing wandb fails now, not after data loading
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
            bad_log.write(bad.records, stage="read")
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
    # After deepspeed.initialize: AutoEP has replaced the MoE blocks the hooks attach to.
    router = RouterLosses.attach(model, cfg.moe)
    if cfg.distributed.expert_parallel > 1:
        from train.expert_parallel import local_expert_count

        local = local_expert_count(model)
        print(f"[ep] rank {dist.rank} holds {sorted(set(local.values()))} of "
              f"{model.config.text_config.num_experts} experts in each of {len(local)} MoE layers",
              flush=True)
    step_flops = StepFlops(model.config)

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
    log = ProgressLog(out / "metrics.jsonl", cfg.train, start_step, enabled=dist.is_main,
                      logging=cfg.logging, run_config=run_config, world_size=dist.world_size,
                      peak_flops=peak_flops(dist.device, DTYPES[cfg.model.dtype]))
    keepalive = VisionKeepAlive(model) if dist.world_size > 1 else None
    (nan_at, kill_at), nan_in_a_row, loss_since_save = injected_faults(), 0, []
    last_rank = dist.rank == dist.world_size - 1

    engine.model.train()
    for step in range(start_step, cfg.train.max_steps):
        if step + 1 == kill_at and last_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(cfg.train.grad_accum)]
        # The loss is the mean over every label token of the global batch, however it is split
        # into micro-batches and ranks; DDP/ZeRO average gradients over ranks, hence the division.
        n_label = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
        items_per_rank = torch.tensor(all_reduce_sum([n_label], dist.device)[0] / dist.world_size)
        loss_sum, tokens, visual, skipped, non_finite = 0.0, 0, 0, [], False
        flops, aux_sum, z_sum = 0.0, 0.0, 0.0
        for i, batch in enumerate(micro_batches):
            skipped += batch.pop("skipped")
            described = batch.pop("samples")
            flops += step_flops.step_flops(batch)
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            tokens += real_tokens(batch)
            visual += sum(d["visual_tokens"] for d in described)
            last = i == len(micro_batches) - 1
            if non_finite and not engine.backward_every_micro_batch:
                continue  # the step is dropped anyway
            with engine.micro_step(last):
                try:
                    if keepalive is not None:
                        keepalive.arm(batch)
                    lm_loss = engine.forward({**batch, "num_items_in_batch": items_per_rank}).loss
                    loss = lm_loss
                    if router is not None:
                        # A per-micro-batch mean: averaged over micro-batches here and over
                        # ranks by the gradient reduction.
                        r = router.loss()
                        loss = lm_loss + r.total / len(micro_batches)
                        aux_sum += r.aux / len(micro_batches)
                        z_sum += r.z / len(micro_batches)
                    if step + 1 in nan_at and last_rank:
                        loss = loss * float("nan")
                    # Every rank must take the same branch (ZeRO and DDP communicate in backward).
                    bad_here = all_reduce_sum([float(not torch.isfinite(loss).item())], dist.device)[0] > 0
                    if bad_here and not engine.can_skip:
                        raise FloatingPointError(
                            f"[train] step {step + 1}: non-finite loss, and the DeepSpeed-built "
                            f"optimizer cannot skip a step; remove the 'optimizer' section from "
                            f"the DeepSpeed JSON (ours skips) or resume with a lower train.lr")
                    non_finite |= bad_here
                    if not bad_here:
                        loss_sum += lm_loss.item() / dist.world_size
                    if not bad_here or engine.backward_every_micro_batch:
                        engine.backward(loss)  # the optimizer drops a step marked non-finite
                except torch.cuda.OutOfMemoryError as e:
                    raise RuntimeError(
                        f"out of GPU memory at step {step + 1}, micro-batch {i + 1} on rank "
                        f"{dist.rank}; the batch holds {describe_batch(described)}. Lower "
                        f"data.max_seq_len, data.vision.max_pixels, train.batch_size or "
                        f"data.pack_tokens, or set model.gradient_checkpointing=true") from e
            engine.micro_done(last, skip=non_finite)
        if skipped:
            records = skipped
            bad_log.write(records, stage="encode", step=step + 1)
            for record in records:
                print(f"[data] rank {dist.rank} skipped {record}", flush=True)
        grad_norm, applied = engine.finish_step(skip=non_finite)
        bad_step = non_finite or not np.isfinite(grad_norm)
        if bad_step:
            nan_in_a_row += 1
            where = "loss" if non_finite else "gradient norm"
            message = f"[train] step {step + 1}: non-finite {where}"
            if cfg.train.on_nan == "stop" or nan_in_a_row >= cfg.train.max_nan_steps or applied:
                reason = ("train.on_nan=stop" if cfg.train.on_nan == "stop" else
                          "the update was already applied" if applied
                          else f"{nan_in_a_row} such steps in a row (train.max_nan_steps)")
                raise FloatingPointError(f"{message}; stopping ({reason}). Resume from the last "
                                         f"checkpoint with a lower train.lr or check the data of "
                                         f"this step.")
            if dist.is_main:
                print(f"{message}; step skipped (train.on_nan=skip)", flush=True)
        else:
            nan_in_a_row = 0
            loss_since_save.append(loss_sum)

        loss, tokens, visual, flops, n_skipped, aux, z = all_reduce_sum(
            [loss_sum, tokens, visual, flops, len(skipped), aux_sum, z_sum], dist.device)
        moe = None
        if router is not None and ((step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.max_steps):
            moe = {"aux_loss": aux / dist.world_size, "z_loss": z / dist.world_size}
            if cfg.moe.log_expert_load:
                moe.update(load_summary(router.pop_load(all_reduce=True), router.layers))
        lrs = engine.lrs()
        log.step(step + 1, loss=loss if not bad_step else float("nan"), lr=lrs.get("llm", next(iter(lrs.values()))),
                 grad_norm=grad_norm, tokens=int(tokens), seconds=time.perf_counter() - t0,
                 skipped=int(n_skipped), lrs=lrs, visual_tokens=int(visual), nan_skipped=bad_step,
                 flops=flops, moe=moe)
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 \
                and step + 1 < cfg.train.max_steps:
            ckpt.save_checkpoint(out, step + 1, engine, dist, cfg.train.keep_last, cfg.train.keep_best,
                                 float(np.mean(loss_since_save)) if loss_since_save else None, run_config)
            loss_since_save = []

    last_checkpoint = ckpt.save_checkpoint(
        out, cfg.train.max_steps, engine, dist, cfg.train.keep_last, cfg.train.keep_best,
        float(np.mean(loss_since_save)) if loss_since_save else None, run_config)
    final = out / "final"
    save_final(engine, processor, final, last_checkpoint, dist)
    barrier()
    log.close()
    return final


def save_final(engine, processor, final: Path, last_checkpoint: Path, dist: DistInfo) -> None:
    """final/: what eval loads - the adapter, or the full model. Full weights under ZeRO-3 exist
    only as shards (under AutoEP, with experts renamed and split over ranks), so rank 0 builds
    them with the exporter from the last checkpoint, in the hub layout plain transformers reads."""
    if not ckpt.save_weights(engine, final, dist):
        # The exporter loads a plain model on rank 0 alone: with transformers still in ZeRO-3
        # mode, that load would partition it collectively and wait for the other ranks forever.
        engine.leave_zero3_loading()
        barrier()
        if dist.is_main:
            from train.export import export

            export(last_checkpoint, final, verify=False, overwrite=True)
        return
    if dist.is_main:
        module = ckpt.unwrap(engine.module)
        if not hasattr(module, "peft_config") and module.config.model_type == "qwen3_vl_moe":
            from train.debug_models import write_experts_in_hub_layout

            write_experts_in_hub_layout(final)  # the hub layout loads under ZeRO-3 / EP too
        processor.save_pretrained(str(final))
