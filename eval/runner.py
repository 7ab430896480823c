"""Run checkpoints over tasks: batched generation, streamed predictions, scores.

Predictions stream to ``output_dir/predictions/<checkpoint>/<task>.jsonl`` as each batch
finishes, each record tagged with its cache ``key``: a hash of the settings (checkpoint path,
adapter, task, generation, vision, dtype, backend: ``settings``) and of the checkpoint's
content (``fingerprint``, see ``eval.fingerprint``), both also stored. A rerun with the same
settings on the same weights skips what is already there, so a killed eval loses nothing and
scores the same; new weights at the same path are generated again (and the console says so),
never scored from the old weights' predictions. A half-written last line (a kill mid-write)
is skipped with a note and its sample generated again (``eval.predictions``). A sample that
cannot be prepared (an unreadable image) or generated (see ``generate_each``) is recorded as a
failure and scored 0; it never stops the run, and a rerun tries it again.

Each prediction is scored once, when it is written: the record carries ``score``, ``parsed``
and ``scorer``, a fingerprint of the task's scoring settings (MathVista's judge; null for tasks
without any). Those settings are left out of the cache key on purpose, so changing the judge
regenerates nothing: the summary rescores just the records whose fingerprint differs (or that
an older version wrote without one) and appends them, superseding the old ones.

Data parallel: under ``torchrun --nproc_per_node N python -m eval ...`` every rank loads the
model, takes every N-th unfinished sample and streams its predictions to its own
``<task>.rank<r>.jsonl``; rank 0 then merges the parts into ``<task>.jsonl`` and scores.
The summary reads the records by sample id, in the benchmark's order, so the result is the
same as a single-process run's.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from data.encode import REPAIRS
from data.media.images import set_max_image_pixels
from eval import leaderboard
from eval.checkpoints import resolve_checkpoint
from eval.config import EvalConfig, check_name
from eval.fingerprint import checkpoint_fingerprint
from eval.generate import build_generator
from eval.metrics import prompt_opens_thinking, strip_thinking, thinking_truncated
from eval.predictions import merge_parts, open_append, read_records
from eval.results import read_results, results_path, update_results
from eval.stats import bootstrap_ci, items_key
from eval.tasks import get_task
from train.distributed import DistInfo, barrier, cleanup, decide_on_main, init_distributed
from train.run_folder import new_run_id, release_lock, take_lock

EVAL_LOCK = "eval.lock"  # in output_dir while an eval runs there


def run_key(cfg: EvalConfig, ck, spec) -> str:
    """A short hash of the settings a prediction depends on (not the weights: see ``cache_key``)."""
    task = {k: v for k, v in asdict(spec).items() if k != "judge"}  # scoring only: see scorer_key
    generation = asdict(cfg.generation)
    if not generation["presence_penalty"]:  # a key added later: old caches keep their keys
        del generation["presence_penalty"]
    payload = {"path": ck.path, "adapter": ck.adapter, "task": task,
               "generation": generation, "vision": asdict(cfg.vision),
               "dtype": cfg.dtype, "backend": cfg.backend}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(settings: str, fingerprint: str | None) -> str:
    """The key predictions are cached under: the settings and the checkpoint's content, so that
    new weights at the same path miss the cache. Without a fingerprint (a caller evaluating a
    generator it built itself) it is the settings key alone, as before fingerprints existed."""
    if fingerprint is None:
        return settings
    return hashlib.sha1(f"{settings}/{fingerprint}".encode()).hexdigest()[:16]


def scorer_key(task) -> str | None:
    """A short hash of the task's scoring settings (``task.scoring_settings()``, e.g. MathVista's
    judge), stored with every score; None for a task whose scoring has no settings. It tells
    the summary which cached scores were made under other settings."""
    settings = task.scoring_settings() if hasattr(task, "scoring_settings") else None
    if settings is None:
        return None
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class EvalHooks:
    """Where a caller can act on a running eval. ``evaluate`` runs with these no-ops; tests and
    benchmarks pass a subclass (``tests/helpers/faults.py`` SIGKILLs the process after N batches
    to prove that a resumed run loses nothing), so no fault injection lives in the loop itself."""

    def batch_written(self) -> None:
        """Called on every rank after each batch's predictions are written and flushed."""


def cached(records: list[dict], key: str) -> dict[str, dict]:
    """Sample id -> its last record made under ``key`` (a later record supersedes: a rescored
    one, or a failed sample's retry)."""
    return {r["id"]: r for r in records if r.get("key") == key}


def old_fingerprint(records: list[dict], settings: str, fingerprint: str | None) -> str | None:
    """The fingerprint of the newest records made with these settings under other weights
    ("none" for records of versions that stored no fingerprint); None when there are none."""
    for r in reversed(records):
        if r.get("settings", r.get("key")) == settings and r.get("fingerprint") != fingerprint:
            return r.get("fingerprint") or "none"
    return None


def say_why_regenerating(records: list[dict], settings: str, fingerprint: str | None,
                         done: dict, ck_name: str) -> None:
    """Tell the user that cached predictions exist but belong to other weights, so a run that
    generates everything again is not a mystery (and the old numbers are not reported)."""
    old = old_fingerprint(records, settings, fingerprint) if fingerprint and not done else None
    if old == "none":
        print(f"[eval] checkpoint {ck_name}: its cached predictions carry no weights fingerprint "
              f"(written by an older version), so they may be another model's: regenerating",
              flush=True)
    elif old:
        print(f"[eval] checkpoint {ck_name} changed since its cached predictions (fingerprint "
              f"{old} -> {fingerprint}): regenerating", flush=True)


def evaluate_task(generator, cfg: EvalConfig, ck, spec, out_dir: Path,
                  dist: DistInfo | None = None, hooks: EvalHooks | None = None,
                  fingerprint: str | None = None) -> dict | None:
    """Generate and score what is missing for one (checkpoint, task), then summarise. Under
    data parallel, every rank generates its share and rank 0 alone returns the result row
    (others: None). ``fingerprint``: the checkpoint's content (``eval.fingerprint``), part of
    the cache key; ``evaluate`` always passes it."""
    hooks = hooks if hooks is not None else EvalHooks()
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    task = get_task(spec.name, spec)
    samples = task.load(spec)[: spec.limit]
    budget = cfg.vision.with_overrides(spec.vision, f"tasks.{spec.name}.vision")
    settings, scorer = run_key(cfg, ck, spec), scorer_key(task)
    key = cache_key(settings, fingerprint)
    tags = {"key": key, "settings": settings, "fingerprint": fingerprint}
    opens_thinking = prompt_opens_thinking(generator.processor)
    check_name(ck.name, "checkpoints[].name")  # it becomes a folder name
    pred_path = out_dir / "predictions" / ck.name / f"{spec.name}.jsonl"
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    records = read_records(pred_path, note=_say if rank == 0 else None)
    done = cached(records, key)
    if rank == 0:
        say_why_regenerating(records, settings, fingerprint, done, ck.name)
    barrier()  # every rank has read the cache before any rank writes to it
    todo = [s for s in samples if s.id not in done or "error" in done[s.id]]
    mine = todo[rank::world]
    out_path = pred_path if world == 1 else pred_path.with_name(f"{spec.name}.rank{rank}.jsonl")

    t0 = time.perf_counter()
    bar = tqdm(total=len(mine), desc=f"{ck.name}/{spec.name}", dynamic_ncols=True, mininterval=1.0,
               disable=not cfg.progress or not mine or rank != 0)
    with open_append(out_path) as f, bar:
        for i in range(0, len(mine), cfg.generation.batch_size):
            chunk = mine[i:i + cfg.generation.batch_size]
            for s, record in predict_batch(generator, chunk, budget, opens_thinking):
                record = score_record(task, s, record, scorer)
                f.write(json.dumps({**record, **tags}) + "\n")
            f.flush()
            bar.update(len(chunk))
            hooks.batch_written()
    seconds = time.perf_counter() - t0

    barrier()  # every rank's part is complete
    if rank != 0:
        barrier()
        return None
    merge_parts(pred_path)
    done = cached(read_records(pred_path), key)
    barrier()  # merged: no rank reads parts of this task any more
    check_complete(samples, done, pred_path)
    rescored = rescore_stale(task, samples, done, scorer, pred_path)
    row = score_task(task, samples, done)
    row.update(checkpoint=ck.name, task=spec.name, split=spec.split or getattr(task, "split", None),
               benchmark=getattr(task, "benchmark", spec.name), generated=len(todo),
               rescored=rescored, processes=world, seconds=round(seconds, 2), config_hash=key,
               fingerprint=fingerprint)
    return row


def evaluate_seeds(generator, cfg: EvalConfig, ck, spec, out_dir: Path, dist=None, hooks=None,
                   fingerprint: str | None = None) -> dict | None:
    """``evaluate_task`` once, or with ``samples_per_item`` k > 1 once per seed (generation.seed,
    +1, ..., each its own cached predictions), combined by ``eval.seeds.combine``."""
    if cfg.samples_per_item == 1:
        return evaluate_task(generator, cfg, ck, spec, out_dir, dist, hooks, fingerprint)
    from eval.seeds import combine

    base, rows = cfg.generation.seed, []
    try:
        for j in range(cfg.samples_per_item):
            cfg.generation.seed = base + j  # the generator reads cfg.generation at each call
            rows.append(evaluate_task(generator, cfg, ck, spec, out_dir, dist, hooks, fingerprint))
    finally:
        cfg.generation.seed = base
    return None if rows[0] is None else combine(rows, [base + j for j in range(len(rows))])


def _say(message: str) -> None:
    print(f"[eval] {message}", flush=True)


def check_complete(samples: list, done: dict[str, dict], pred_path: Path) -> None:
    """Every sample has a record once its generation is written; if one has none (another
    eval writing the same file at the same time, say), stop with the file's name rather than
    a bare KeyError."""
    missing = [s.id for s in samples if s.id not in done]
    if missing:
        raise RuntimeError(f"{pred_path}: no readable record for {len(missing)} sample(s) "
                           f"({', '.join(missing[:3])}) after generating them; is another eval "
                           f"writing into this output_dir? Run again to generate them")


def predict_batch(generator, chunk: list, budget, opens_thinking: bool) -> list[tuple]:
    """[(sample, unscored record)] for one batch. A sample that cannot be prepared or generated
    becomes a record with ``error`` instead of a prediction."""
    prepared, records = [], []
    for s in chunk:
        try:
            prepared.append((s, generator.prepare(s, budget)))
        except (OSError, ValueError) as e:
            records.append((s, {"id": s.id, "prediction": "", "error": f"{type(e).__name__}: {e}"}))
    # What was repaired to use a sample (video frames filled) stays with its prediction.
    repairs = {id(s): p.pop(REPAIRS) for s, p in prepared if isinstance(p, dict) and REPAIRS in p}
    for s, text in generate_each(generator, prepared):
        if isinstance(text, Exception):
            records.append((s, {"id": s.id, "prediction": "",
                                "error": f"generation failed: {type(text).__name__}: {text}"}))
            continue
        record = {"id": s.id, "prediction": text, "answer": s.answer(), **prompt_of(s)}
        if thinking_truncated(text, opens_thinking):
            record["thinking_truncated"] = True
        if id(s) in repairs:
            record["repairs"] = repairs[id(s)]
        records.append((s, record))
    return records


def prompt_of(sample) -> dict:
    """What the model was asked, for ``python -m eval.diff``: the prompt's text (``<image>`` /
    ``<video>`` where media stood) and the image references."""
    parts = []
    for message in sample.prompt_messages():
        for part in message["content"] if isinstance(message["content"], list) else [
                {"type": "text", "text": str(message["content"])}]:
            parts.append(part.get("text", "") if part.get("type") == "text" else f"<{part.get('type')}>")
    return {"prompt": "".join(parts), "images": [str(ref) for ref in sample.images]}


def generate_each(generator, prepared: list[tuple]) -> list[tuple]:
    """[(sample, reply text or the exception that sample raised)]. A batch that fails (an
    out-of-memory on one long sample, say) is retried one sample at a time so that only the
    culprits are recorded as failed; when every sample fails alone too, the fault is not in
    the data, and the error stops the run (finished batches are already on disk)."""
    if not prepared:
        return []
    try:
        return list(zip([s for s, _ in prepared], generator.generate([p for _, p in prepared])))
    except Exception as batch_error:  # noqa: BLE001 - decided per sample below
        if len(prepared) == 1:
            raise
        results = []
        for s, p in prepared:
            try:
                results.append((s, generator.generate([p])[0]))
            except Exception as e:  # noqa: BLE001 - recorded with the sample
                results.append((s, e))
        if all(isinstance(text, Exception) for _, text in results):
            raise batch_error
        return results


def score_record(task, sample, record: dict, scorer: str | None) -> dict:
    """The record with ``score``, ``parsed`` and the ``scorer`` fingerprint they were made
    under. Failed samples score 0 (counted as failed, not unparsed); unfinished reasoning
    scores 0 and counts as unparsed, without asking the task."""
    if "error" in record:
        score, parsed = 0.0, True
    elif record.get("thinking_truncated"):
        score, parsed = 0.0, False
    else:
        score, parsed = task.score(strip_thinking(record["prediction"]), sample)
    return {**record, "score": score, "parsed": parsed, "scorer": scorer}


def scored_under(record: dict, scorer: str | None) -> bool:
    """Whether the record's stored score was made under these scoring settings. Records from
    versions that stored no fingerprint (or no score) were not."""
    return all(k in record for k in ("score", "parsed", "scorer")) and record["scorer"] == scorer


def rescore_stale(task, samples: list, done: dict[str, dict], scorer: str | None,
                  pred_path: Path) -> int:
    """Rescore, in ``done``, the samples whose records were scored under other settings, and
    append the rescored records to the predictions file, where they supersede the old ones
    (``cached`` keeps a sample's last record), so that the next run does not ask a judge
    again. Returns how many were rescored."""
    stale = [s for s in samples if not scored_under(done[s.id], scorer)]
    if stale:
        with open_append(pred_path) as f:
            for s in stale:
                done[s.id] = score_record(task, s, done[s.id], scorer)
                f.write(json.dumps(done[s.id]) + "\n")
                f.flush()  # a judge is slow: keep what is done if the run is killed
    return len(stale)


def score_task(task, samples: list, done: dict[str, dict]) -> dict:
    """Summarise the stored scores of every sample (see ``rescore_stale`` for stale ones);
    failures score 0 and are counted. The row carries the parse rate beside the score, the 95%
    bootstrap interval (``ci``, ``eval.stats``: fixed seed, so every checkpoint on the same items
    is resampled alike), and the per-item scores in the benchmark's order (``item_scores``)
    with the hash of the item ids (``items``), for paired tests between checkpoints."""
    scores, unparsed, failed, truncated = [], 0, 0, 0
    groups: dict[str, list[float]] = {}
    for s in samples:
        record = done[s.id]
        score, parsed = record["score"], record["parsed"]
        failed += "error" in record
        truncated += bool(record.get("thinking_truncated"))
        unparsed += not parsed
        scores.append(score)
        for group in breakdown_keys(task, s):
            groups.setdefault(group, []).append(score)
    low, high = bootstrap_ci(scores)
    row = {"metric": task.metric, "score": sum(scores) / len(scores), "n": len(scores),
           "unparsed": unparsed, "parse_rate": round(1 - unparsed / len(scores), 4),
           "failed": failed, "thinking_truncated": truncated, "ci": [low, high],
           "items": items_key([s.id for s in samples]),
           "item_scores": [round(float(x), 4) for x in scores]}
    if groups:
        row["breakdown"] = {g: {"score": sum(v) / len(v), "n": len(v)} for g, v in sorted(groups.items())}
    return row


def breakdown_keys(task, sample) -> list[str]:
    """Groups a sample counts in for per-category accuracy ("subject/Art", "skill/algebra"):
    from the task's optional ``breakdown(sample) -> {kind: value or [values]}``."""
    if not hasattr(task, "breakdown"):
        return []
    keys = []
    for kind, values in task.breakdown(sample).items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value:
                keys.append(f"{kind}/{value}")
    return keys


def evaluate(cfg: EvalConfig, hooks: EvalHooks | None = None) -> list[dict]:
    """Every checkpoint on every task; results/<checkpoint>.json (merged with earlier runs':
    see ``eval.results``) and the leaderboard. Returns this run's result rows (on rank 0; other
    ranks of a data-parallel run return []). ``hooks``: see ``EvalHooks``."""
    dist = init_distributed()
    if cfg.backend == "vllm" and dist.world_size > 1:
        raise ValueError("backend: vllm runs in one process (it shards with vllm.tensor_parallel_size); "
                         "launch it with python -m eval, not torchrun")
    out_dir = Path(cfg.output_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    set_max_image_pixels(cfg.max_image_pixels)
    # One eval at a time per folder: two would append to the same predictions files and
    # rewrite each other's results (a dead holder's lock is taken over).
    lock = decide_on_main(lambda: take_lock(out_dir, new_run_id(), "eval output_dir",
                                            EVAL_LOCK)[0], dist.is_main)
    try:
        return _evaluate(cfg, hooks, dist, out_dir)
    finally:
        if dist.is_main:
            release_lock(lock)
        cleanup()


def _evaluate(cfg: EvalConfig, hooks: EvalHooks | None, dist, out_dir: Path) -> list[dict]:
    if dist.is_main:
        for ck in cfg.checkpoints:  # an unreadable results file stops the run before any work
            read_results(results_path(out_dir, ck.name))
    all_rows = []
    for ck in cfg.checkpoints:
        announce = (lambda message: print(f"[eval] {ck.name}: {message}", flush=True)) \
            if dist.is_main else None
        resolved = resolve_checkpoint(ck.path, ck.adapter, announce)
        fingerprint = checkpoint_fingerprint(resolved)
        if dist.is_main:
            print(f"[eval] {ck.name}: {resolved.kind} {resolved.arch} checkpoint, model {resolved.model}"
                  + (f", adapter {resolved.adapter}" if resolved.adapter else "")
                  + f", fingerprint {fingerprint}", flush=True)
        generator = build_generator(resolved, cfg, dist.device)
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows = []
        for spec in cfg.tasks:
            row = evaluate_seeds(generator, cfg, ck, spec, out_dir, dist, hooks, fingerprint)
            if row is None:
                continue
            row.update(model=resolved.model, adapter=resolved.adapter, checkpoint_kind=resolved.kind,
                       arch=resolved.arch, date=date)
            spread = (f" (mean of {len(row['seed_scores'])} seeds, sd {row['seed_sd']:.4f})"
                      if "seed_scores" in row else "")
            print(f"[eval] {ck.name} {row['task']}: {row['metric']}={row['score']:.4f}{spread} "
                  f"[95% CI {row['ci'][0]:.4f}, {row['ci'][1]:.4f}] "
                  f"(n={row['n']}, unparsed={row['unparsed']}, failed={row['failed']}"
                  + (f", rescored={row['rescored']}" if row["rescored"] else "") + ")", flush=True)
            rows.append(row)
        if dist.is_main:
            update_results(results_path(out_dir, ck.name), rows, fingerprint, announce)
        all_rows += rows
        del generator
    if cfg.leaderboard and dist.is_main:
        rows = leaderboard.collect(out_dir / "results")
        md, js = leaderboard.write(rows, cfg.leaderboard, cfg.leaderboard_base,
                                   cfg.leaderboard_references)
        html, png = leaderboard.write_figures(rows, cfg.leaderboard, cfg.leaderboard_base,
                                              cfg.leaderboard_references)
        print(f"[eval] leaderboard: {md} {js} {html} {png}\n\n{md.read_text()}", flush=True)
    barrier()
    return all_rows
