"""The training loop, top to bottom: ``claim_output_dir`` checks the config's paths and makes
the output folder this run's (a lock, no previous run's files mixed in, a resumable checkpoint
that fits; train/run_folder.py), ``set_up`` builds the run (data, model and engine, resume,
batches, logging), ``train_step`` runs one optimizer step over its micro-batches, the loop
checks, logs and saves, and ``save_final`` writes what eval loads. Nothing is saved from
weights holding NaN/inf, nor during a streak of non-finite steps.

One code path for a single process, ``torchrun`` / ``deepspeed``-launched DDP, and DeepSpeed
ZeRO-2/3 (with CPU offload and AutoEP expert parallelism): everything that differs between them
sits behind the engine (train/engine.py). ``hooks`` (train/hooks.py) let tests and benchmarks
act on the run from outside (kill it, make a loss NaN); ``python -m train`` passes none.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.configio import to_dict
from data.corpus import load_corpus
from data.pair_corpus import load_pair_corpus
from data.prompts import PromptCollator, load_prompt_corpus, prompts_in
from data.prepared import PreparedDataset
from data.samples import BadSample, BadSampleFile, BadSampleLog, DataError
from train import checkpoint as ckpt
from train import layout, run_folder
from train.config import Config
from train.data import BatchPlan, EncodedDataset, StepBatchSampler, TrainCollator, make_loader
from train.distributed import (DistInfo, all_reduce_sum, barrier, decide_on_main, init_distributed,
                               with_sequence_parallel)
from train.engine import build_engine, unwrap
from train.errors import NonFiniteError
from train.health import CollapseWatch, nonfinite_weights
from train.qwen3_vl.flops import StepFlops, peak_flops
from train.hooks import TrainHooks
from train.lora import apply_lora
from train.modeling import DTYPES, load_model, load_processor
from train.moe import RouterLosses, load_summary
from train.objectives import dpo_reference
from train.objectives.dpo_step import DpoStep, PairCollator, pairs_in, reference_model
from train.objectives.grpo_step import GrpoStep, append_records
from train.objectives.reference import partitioned_reference
from train.params import freeze_parts
from train.progress import ProgressLog
from train.trackers import check_trackers


@dataclass
class Run:
    """Everything the steps share, built once by ``set_up``."""

    cfg: Config
    dist: DistInfo
    out: Path
    run_config: dict
    processor: object
    engine: object
    router: RouterLosses | None
    batches: object  # iterator over this rank's collated micro-batches
    log: ProgressLog
    bad_file: BadSampleFile
    step_flops: StepFlops
    hooks: TrainHooks
    start_step: int
    collapse: CollapseWatch
    objective: "DpoStep | GrpoStep | None" = None  # train.objective dpo / grpo; None: SFT


@dataclass
class StepResult:
    """One optimizer step, this rank's share: sums over its micro-batches."""

    loss: float = 0.0  # LM loss, already divided by the world size (0 if the step was bad)
    tokens: int = 0
    visual_tokens: int = 0
    flops: float = 0.0
    aux: float = 0.0
    z: float = 0.0
    non_finite: bool = False  # a micro-batch's loss was NaN/inf on some rank
    grad_norm: float = 0.0
    applied: bool = False
    skipped: list[BadSample] = field(default_factory=list)
    repaired: list[BadSample] = field(default_factory=list)  # used after a repair (reason says)
    stats: dict[str, float] = field(default_factory=dict)  # the objective's, summed over ranks


def train(cfg: Config, hooks: TrainHooks | None = None) -> Path:
    dist = init_distributed()
    claim = claim_output_dir(cfg, dist)
    try:
        return run_steps(set_up(cfg, dist, claim, hooks or TrainHooks()))
    finally:
        if dist.is_main:
            run_folder.release_lock(claim.lock)


def run_steps(run: Run) -> Path:
    """The steps from the resumed one (or 1) to max_steps, then the last checkpoint and final/."""
    cfg = run.cfg
    nan_in_a_row, loss_since_save = 0, []
    for step in range(run.start_step + 1, cfg.train.max_steps + 1):
        run.hooks.step_begin(step, run.dist.rank, run.dist.world_size)
        t0 = time.perf_counter()
        result = train_step(run, step)
        report_skipped(run, step, result.skipped, result.repaired)
        bad_step = result.non_finite or not np.isfinite(result.grad_norm)
        nan_in_a_row = nan_in_a_row + 1 if bad_step else 0
        if bad_step:
            stop_or_skip(run, step, result, nan_in_a_row)
        loss = log_step(run, step, result, bad_step, time.perf_counter() - t0)
        if not bad_step:
            loss_since_save.append(loss)
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.max_steps:
            if nan_in_a_row:
                say_save_skipped(run, step, nan_in_a_row)
            else:
                save_checkpoint(run, step, loss_since_save)
                loss_since_save = []
    last_checkpoint = save_checkpoint(run, cfg.train.max_steps, loss_since_save)
    final = run.out / layout.FINAL
    save_final(run, final, last_checkpoint)
    barrier()
    run.log.close()
    return final


# --- Set-up ----------------------------------------------------------------------------------

def claim_output_dir(cfg: Config, dist: DistInfo) -> run_folder.Claim:
    """Before anything is written: the config's paths exist, and rank 0 has locked the output
    folder, settled what a previous run left in it and picked the checkpoint to resume (every
    rank gets its decision, or its error)."""
    check_trackers(cfg.logging.report_to)  # a missing wandb fails now, not after data loading
    run_folder.check_paths(cfg)
    claim = decide_on_main(lambda: run_folder.claim(cfg, to_dict(cfg)), dist.is_main)
    if dist.is_main:
        for note in claim.notes:
            print(f"[train] {note}", flush=True)
    return claim


def set_up(cfg: Config, dist: DistInfo, claim: run_folder.Claim, hooks: TrainHooks) -> Run:
    out = Path(cfg.train.output_dir)
    run_config = {"run_id": claim.run_id, **to_dict(cfg)}
    seed_everything(cfg.train.seed)
    # Under sequence parallelism the ranks of a group share each micro-batch: the data is
    # split over dist.dp_size, not the world.
    dist = with_sequence_parallel(dist, cfg.distributed.sequence_parallel)

    processor = load_processor(cfg.model.path)
    bad_file = BadSampleFile(out / "bad_samples.jsonl", dist.rank)
    corpus = load_data(cfg, dist, processor, bad_file)
    engine = build_engine(cfg, dist, lambda: build_model(cfg))
    # After the engine: AutoEP has replaced the MoE blocks the router hooks attach to.
    router = RouterLosses.attach(engine.module, cfg.moe,
                                 dist.sp_group.group if dist.sequence_parallel > 1 else None)
    start_step = resume(cfg, dist, engine, claim.resume_from)

    plan = BatchPlan(corpus.mixture(cfg.train.seed), cfg.train.batch_size, cfg.train.seed,
                     corpus.lengths, cfg.data.pack_tokens if cfg.data.packing else None,
                     cfg.data.group_by_length)
    sampler = StepBatchSampler(plan, cfg.train.grad_accum, dist.dp_size, dist.dp_rank,
                               cfg.train.max_steps, start_step)
    collator = COLLATORS[cfg.train.objective](
        processor.tokenizer.pad_token_id, cfg.data.packing, processor.image_processor.merge_size)
    dataset = EncodedDataset(corpus, cfg.data.on_bad_sample,
                             corpus.lengths if cfg.data.packing else None)
    batches = iter(make_loader(dataset, sampler, collator, cfg.data.num_workers))
    if dist.is_main:  # only now: a run that failed to start leaves no config.json behind
        (out / layout.RUN_CONFIG).write_text(json.dumps(run_config, indent=2))
    log = ProgressLog(out / "metrics.jsonl", cfg.train, start_step, enabled=dist.is_main,
                      logging=cfg.logging, run_config=run_config, world_size=dist.world_size,
                      peak_flops=peak_flops(dist.device, DTYPES[cfg.model.dtype]))
    engine.model.train()
    return Run(cfg, dist, out, run_config, processor, engine, router, batches, log, bad_file,
               StepFlops(engine.module.config), hooks, start_step,
               CollapseWatch(cfg.train.collapse_steps),
               build_objective(cfg, dist, engine, processor, dataset, collator))


def resume(cfg: Config, dist: DistInfo, engine, checkpoint: Path | None) -> int:
    """Restore ``checkpoint`` (chosen and checked by the claim); returns its step.

    A train.lr (or vision_lr / merger_lr) that differs from the checkpoint's is applied, not
    silently replaced by the saved schedule: the schedule keeps its shape and position (warm-up
    and decay over max_steps, counted from step 0) with the new peak, so the next step's lr is
    the new peak times the schedule's factor at the resumed step. This is what the advice
    "resume with a lower train.lr" after a NaN stop needs."""
    if checkpoint is None:
        return 0
    configured = engine.peak_lrs()
    step = ckpt.load_checkpoint(checkpoint, engine, dist)["step"]
    saved = engine.peak_lrs()
    if dist.is_main:
        print(f"[train] resumed from {checkpoint} at step {step}", flush=True)
    if not np.allclose(saved, configured, rtol=1e-9, atol=0.0):
        engine.set_peak_lrs(configured)
        if dist.is_main:
            names = list(engine.lrs())
            was = ", ".join(f"{n} {lr:g}" for n, lr in zip(names, saved))
            now = ", ".join(f"{n} {lr:g}" for n, lr in zip(names, configured))
            print(f"[train] the config's peak lr ({now}) differs from the checkpoint's ({was}): "
                  f"the schedule continues from step {step} with the config's peak", flush=True)
    return step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: Config, dist: DistInfo, processor, bad_file: BadSampleFile):
    """The corpus: every record read, checked and planned up front (so a bad file fails now,
    not at step 9000), or the encoded samples of a prepared cache. Bad samples go to the run's
    bad_samples.jsonl; too many stop the run."""
    bad = BadSampleLog(cfg.data.on_bad_sample)
    if cfg.data.prepared:
        corpus = PreparedDataset(cfg.data.prepared, cfg.data, cfg.model.path)  # refuses a stale one
        left_out = corpus.bad_samples()
        if left_out and cfg.data.on_bad_sample == "error":
            raise DataError(f"the prepared data {cfg.data.prepared} left out {len(left_out)} bad "
                            f"samples (e.g. {left_out[0]}); see its bad_samples.jsonl. Fix them and "
                            f"prepare again, or set data.on_bad_sample=skip.")
        bad.records = left_out
    elif cfg.train.objective == "dpo":
        corpus = load_pair_corpus(cfg.data, processor, bad, plan=cfg.data.plan_ahead)
    elif cfg.train.objective == "grpo":
        corpus = load_prompt_corpus(cfg.data, processor, bad, plan=cfg.data.plan_ahead,
                                    max_new_tokens=cfg.grpo.max_new_tokens)
    else:
        corpus = load_corpus(cfg.data, processor, bad, plan=cfg.data.plan_ahead,
                             progress=dist.is_main)
    if bad.records:
        if dist.is_main:
            bad_file.write(bad.records, stage="read")
        bad.check_fraction(len(corpus), cfg.data.max_bad_fraction)
        if dist.is_main:
            print(f"[data] skipping {bad.report(len(corpus))}\n[data] all of them: "
                  f"{bad_file.path}", flush=True)
    if dist.is_main:
        print(f"[data] {len(corpus)} samples ({corpus.summary()})", flush=True)
    return corpus


def build_model(cfg: Config):
    """The model as it trains: loaded (the class from its config.json, the patch embedding as
    ``model.patch_embed`` says), LoRA adapters on the unfrozen parts or, for full fine-tuning,
    the frozen parts frozen; then the activation-memory switches (checkpointing, offload, tiled
    MLP: ``train/activations.py``), last, so they wrap peft's modules too."""
    from train.activations import apply_activation_memory

    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                       experts_implementation=cfg.model.experts_implementation,
                       patch_embed=cfg.model.patch_embed)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, cfg.train)
    else:
        freeze_parts(model, cfg.train)
    return apply_activation_memory(model, cfg.model)


# How each objective batches its micro-batches (an SFT row, a pair's two rows, prompts).
COLLATORS = {"sft": TrainCollator, "dpo": PairCollator, "grpo": PromptCollator}


def build_objective(cfg: Config, dist: DistInfo, engine, processor, dataset=None,
                    collator=None) -> DpoStep | GrpoStep | None:
    """The DPO or GRPO step and its reference (train/objectives/), or None for SFT. The
    reference is the model with its LoRA adapters off, or a frozen copy of the base for full
    fine-tuning (DPO without ``precompute_reference``, GRPO only with a KL term); with
    ``dpo.precompute_reference`` a table of every pair's reference log-probs, computed here
    before the first update (or read back on resume)."""
    objective = cfg.train.objective
    if objective == "sft":
        return None
    precomputed = objective == "dpo" and cfg.dpo.precompute_reference
    if precomputed:
        table = dpo_reference.load_or_compute(
            Path(cfg.train.output_dir) / dpo_reference.FILE, dataset, collator,
            unwrap(engine.module), dist, cfg.train.batch_size, cfg.lora.enabled)
        return DpoStep(cfg.dpo, table=table, policy=unwrap(engine.module))
    needs_copy = not cfg.lora.enabled and (objective == "dpo" or cfg.grpo.kl_coef > 0)

    def load_base():
        return load_model(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                          experts_implementation=cfg.model.experts_implementation)

    if needs_copy and engine.zero3:  # a copy per rank would undo ZeRO-3: partition it too
        reference = partitioned_reference(load_base, engine.ds_config, engine.hf_ds_config)
    else:
        reference = reference_model(cfg, lambda: load_base().to(dist.device)) if needs_copy else None
    if objective == "dpo":
        return DpoStep(cfg.dpo, reference, shard=engine.sp_shard, policy=unwrap(engine.module))
    rollout_engine = None
    if cfg.grpo.rollout_backend == "vllm":  # refused at config time without vLLM and CUDA
        from train.objectives.rollout_vllm import VllmRollouts

        rollout_engine = VllmRollouts(cfg.model.path, processor, cfg.grpo, cfg.data.vision,
                                      cfg.model.dtype, dist.world_size)
    return GrpoStep(cfg.grpo, processor, reference,
                    synced_gpus=engine.zero3 and dist.world_size > 1, engine=rollout_engine)


# --- One step --------------------------------------------------------------------------------

def train_step(run: Run, step: int) -> StepResult:
    """Forward and backward over this rank's micro-batches of ``step``, then the update.

    The loss is the mean over every label token of the global batch, however it is split into
    micro-batches and ranks; DDP/ZeRO average gradients over ranks, hence the division of
    ``num_items_in_batch`` by the world size. A non-finite loss on any rank marks the step for
    all of them before anyone runs backward (ZeRO and DDP communicate in backward).

    Under sequence parallelism the N ranks of a group hold the same micro-batches: its labels
    are counted once (hence the division by N), each rank's loss sums its slice of them, and
    only the group's first rank counts tokens, FLOPs and bad samples for the log."""
    cfg, dist, engine = run.cfg, run.dist, run.engine
    micro_batches = [next(run.batches) for _ in range(cfg.train.grad_accum)]
    if isinstance(run.objective, DpoStep):  # the mean is over pairs, not label tokens
        n_label = sum(pairs_in(b) for b in micro_batches)
    elif isinstance(run.objective, GrpoStep):  # over prompts (each with its completions)
        n_label = sum(prompts_in(b) for b in micro_batches)
    else:
        n_label = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
    global_labels = all_reduce_sum([n_label], dist.device)[0] / dist.sequence_parallel
    items_per_rank = torch.tensor(global_labels / dist.world_size)
    counts = dist.sp_rank == 0
    r = StepResult()
    for i, batch in enumerate(micro_batches):
        skipped, repaired, described = batch.pop("skipped"), batch.pop("repaired"), batch.pop("samples")
        rows_known = not isinstance(run.objective, GrpoStep)  # GRPO's rows are generated below
        if counts:
            r.skipped += skipped
            r.repaired += repaired
            r.flops += run.step_flops.step_flops(batch) if rows_known else 0.0
        batch = {k: v.to(dist.device) for k, v in batch.items()}
        if counts:
            r.tokens += real_tokens(batch) if rows_known else 0
            r.visual_tokens += sum(d["visual_tokens"] for d in described)
        last = i == len(micro_batches) - 1
        if r.non_finite and not engine.backward_every_micro_batch:
            continue  # the step is dropped anyway
        with engine.micro_step(last), out_of_memory_names(described, step, i, dist.rank):
            if run.objective is not None:
                # GRPO samples each micro-batch's rollouts from a seed of its own: a resumed
                # run draws what the uninterrupted run drew, and the seed follows the
                # micro-batch's place in the step's global batch (StepBatchSampler's order), not
                # the rank, so 2 processes x 1 micro-batch draw what 1 x 2 draws.
                seeded = {} if rows_known else {
                    "seed": rollout_seed(cfg.train.seed, step, i * dist.dp_size + dist.dp_rank)}
                lm_loss, stats = run.objective.loss(engine.forward, unwrap(engine.module), batch,
                                                    float(items_per_rank), **seeded)
                for key, value in stats.items():
                    r.stats[key] = r.stats.get(key, 0.0) + value / len(micro_batches)
                if not rows_known and counts:  # the prompts and their sampled completions
                    r.flops += run.step_flops.step_flops(run.objective.last_rows)
                    r.tokens += real_tokens(run.objective.last_rows)
            else:
                lm_loss = engine.forward({**batch, "num_items_in_batch": items_per_rank}).loss
            loss = lm_loss
            if run.router is not None:
                # A per-micro-batch mean: averaged over micro-batches here and over ranks by
                # the gradient reduction.
                router = run.router.loss()
                loss = lm_loss + router.total / len(micro_batches)
                r.aux += router.aux / len(micro_batches)
                r.z += router.z / len(micro_batches)
            loss = run.hooks.loss(step, loss, dist.rank, dist.world_size)
            bad_here = all_reduce_sum([float(not torch.isfinite(loss).item())], dist.device)[0] > 0
            if bad_here and not engine.can_skip:
                raise NonFiniteError(
                    f"[train] step {step}: non-finite loss, and the DeepSpeed-built optimizer "
                    f"cannot skip a step; remove the 'optimizer' section from the DeepSpeed JSON "
                    f"(ours skips) or resume with a lower train.lr")
            r.non_finite |= bad_here
            if not bad_here:
                r.loss += lm_loss.item() / dist.world_size
            if not bad_here or engine.backward_every_micro_batch:
                engine.backward(loss)  # the optimizer drops a step marked non-finite
        engine.micro_done(last, skip=r.non_finite)
    r.grad_norm, r.applied = engine.finish_step(skip=r.non_finite)
    if isinstance(run.objective, GrpoStep):  # every completion, its rewards and advantage
        if r.applied:
            run.objective.weights_changed()
        name = "rollouts.jsonl" if dist.rank == 0 else f"rollouts.rank{dist.rank}.jsonl"
        append_records(run.out / name, run.objective.take_records(), step, dist.rank)
    return r


def rollout_seed(seed: int, step: int, index: int) -> int:
    """A distinct sampling seed per (run seed, step, micro-batch): ``index`` is the micro-batch's
    place among the step's ``grad_accum x data-parallel ranks`` micro-batches (rank r's i-th is
    ``i * dp_size + r``, as ``StepBatchSampler`` hands them out; distinct for up to a million
    micro-batches a step)."""
    return ((seed * 1_000_003 + step) * 1_000_003 + index) % 2**63


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (a packed row has none)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


@contextlib.contextmanager
def out_of_memory_names(samples: list[dict], step: int, micro_batch: int, rank: int):
    """An out-of-memory error that names the micro-batch's samples and what to lower."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        held = ", ".join(f"{s['id']} ({s['tokens']} tokens, {s['visual_tokens']} visual)"
                         for s in samples)
        raise RuntimeError(
            f"out of GPU memory at step {step}, micro-batch {micro_batch + 1} on rank {rank}; the "
            f"batch holds {held}. Lower data.max_seq_len, data.vision.max_pixels, "
            f"train.batch_size or data.pack_tokens, or set model.gradient_checkpointing=true") from e


# --- After a step ----------------------------------------------------------------------------

def report_skipped(run: Run, step: int, skipped: list[BadSample],
                   repaired: list[BadSample] = ()) -> None:
    """Samples that failed to encode this step and were replaced, and samples trained after a
    repair (e.g. undecodable video frames filled): on disk and on the console."""
    for records, stage, verb in ((skipped, "encode", "skipped"), (repaired, "repaired", "repaired")):
        if records:
            run.bad_file.write(records, stage=stage, step=step)
            for record in records:
                print(f"[data] rank {run.dist.rank} {verb} {record}", flush=True)


def stop_or_skip(run: Run, step: int, result: StepResult, nan_in_a_row: int) -> None:
    """A step with a non-finite loss or gradient norm: skipped (no update, counted) under
    ``train.on_nan=skip``; the run stops under ``stop``, after ``max_nan_steps`` in a row, or
    when the update was already applied."""
    where = "loss" if result.non_finite else "gradient norm"
    message = f"[train] step {step}: non-finite {where}"
    train_cfg = run.cfg.train
    if train_cfg.on_nan == "stop" or nan_in_a_row >= train_cfg.max_nan_steps or result.applied:
        reason = ("train.on_nan=stop" if train_cfg.on_nan == "stop" else
                  "the update was already applied" if result.applied
                  else f"{nan_in_a_row} such steps in a row (train.max_nan_steps)")
        raise NonFiniteError(f"{message}; stopping ({reason}). Resume from the last "
                             f"checkpoint with a lower train.lr (train.resume=auto "
                             f"train.lr=...) or check the data of this step.")
    if run.dist.is_main:
        print(f"{message}; step skipped (train.on_nan=skip)", flush=True)


def log_step(run: Run, step: int, r: StepResult, bad_step: bool, seconds: float) -> float:
    """Sums over ranks to the progress log (and MoE statistics on logging steps); returns the
    step's global loss."""
    cfg, dist = run.cfg, run.dist
    loss, tokens, visual, flops, n_skipped, aux, z = all_reduce_sum(
        [r.loss, r.tokens, r.visual_tokens, r.flops, len(r.skipped), r.aux, r.z], dist.device)
    moe = None
    if run.router is not None and (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):
        moe = {"aux_loss": aux / dist.world_size, "z_loss": z / dist.world_size}
        if cfg.moe.log_expert_load:
            moe.update(load_summary(run.router.pop_load(all_reduce=True), run.router.layers))
    stats = dict(zip(r.stats, all_reduce_sum(list(r.stats.values()), dist.device)))
    objective = {key: value / dist.world_size for key, value in stats.items()} or None
    lrs = run.engine.lrs()
    lr = lrs.get("llm", next(iter(lrs.values())))
    collapsed = not bad_step and run.collapse.update(loss, r.grad_norm)
    if collapsed and run.collapse.just_collapsed and dist.is_main:
        print(f"[train] warning: step {step}: the run looks collapsed: {run.collapse.streak} steps "
              f"in a row with a gradient norm of 0 or the loss unchanged ({loss:.6g}), as an lr "
              f"far too high for the model does (lr now {lr:.3g}). Training goes on; "
              f"metrics.jsonl marks these steps collapsed=true (train.collapse_steps, 0: off)",
              flush=True)
    run.log.step(step, loss=loss if not bad_step else float("nan"), lr=lr,
                 grad_norm=r.grad_norm, tokens=int(tokens), seconds=seconds,
                 skipped=int(n_skipped), lrs=lrs, visual_tokens=int(visual),
                 nan_skipped=bad_step, flops=flops, moe=moe, collapsed=collapsed,
                 objective=objective)
    return loss


# --- Saving ----------------------------------------------------------------------------------

def say_save_skipped(run: Run, step: int, nan_in_a_row: int) -> None:
    """A checkpoint due during a streak of non-finite steps is not written: it could hold
    weights an update already spoiled, and retention would delete a good one for it."""
    if run.dist.is_main:
        kept = layout.list_checkpoints(run.out)
        print(f"[train] step {step}: not saving checkpoint-{step}: this is non-finite step "
              f"{nan_in_a_row} in a row; the last checkpoint "
              f"({kept[-1].name if kept else 'none yet'}) stays", flush=True)


def check_weights_finite(run: Run, step: int) -> None:
    """Stop (non-zero exit) rather than save weights holding NaN/inf as a result. Under ZeRO-3
    each rank checks its own shards; the count is summed over ranks."""
    bad = nonfinite_weights(run.engine.module)
    count = int(all_reduce_sum([len(bad)], run.dist.device)[0])
    if count:
        kept = layout.list_checkpoints(run.out)
        advice = (f"The last good checkpoint is {kept[-1]}: resume from it (train.resume=auto) "
                  f"with a lower train.lr" if kept else
                  "No checkpoint was written before: start again with a lower train.lr")
        raise NonFiniteError(
            f"step {step}: {count} trainable weight tensors hold NaN/inf (e.g. "
            f"{bad[0] if bad else 'on another rank'}); not writing checkpoint-{step} or final/. "
            f"{advice}")


def save_checkpoint(run: Run, step: int, loss_since_save: list[float]) -> Path:
    check_weights_finite(run, step)
    train_cfg = run.cfg.train
    return ckpt.save_checkpoint(run.out, step, run.engine, run.dist, train_cfg.keep_last,
                                train_cfg.keep_best,
                                float(np.mean(loss_since_save)) if loss_since_save else None,
                                run.run_config)


def save_final(run: Run, final: Path, last_checkpoint: Path) -> None:
    """final/: what eval loads - the adapter, or the full model. Full weights under ZeRO-3 exist
    only as shards (under AutoEP, with experts renamed and split over ranks), so rank 0 builds
    them with the exporter from the last checkpoint, in the hub layout plain transformers reads."""
    engine, dist = run.engine, run.dist
    if not engine.save_weights(final):
        # The exporter loads a plain model on rank 0 alone: with transformers still in ZeRO-3
        # mode, that load would partition it collectively and wait for the other ranks forever.
        engine.leave_zero3_loading()
        barrier()
        if dist.is_main:
            from train.export import export

            export(last_checkpoint, final, verify=False, overwrite=True)
        return
    if dist.is_main:
        module = unwrap(engine.module)
        if not hasattr(module, "peft_config") and module.config.model_type == "qwen3_vl_moe":
            from train.qwen3_vl.state_dict import write_experts_in_hub_layout

            write_experts_in_hub_layout(final)  # the hub layout loads under ZeRO-3 / EP too
        run.processor.save_pretrained(str(final))
