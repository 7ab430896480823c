"""Run checkpoints over tasks: batched greedy generation, streamed predictions, scores.

Predictions stream to ``output_dir/predictions/<checkpoint>/<task>.jsonl`` as each batch
finishes, keyed by a hash of (checkpoint, adapter, task, generation and vision settings). A
rerun with the same settings skips what is already there, so a killed eval loses nothing. A
sample that cannot be encoded (e.g. unreadable image) is recorded as a failure and scored 0.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from data.encode import SampleEncoder, collate
from eval import leaderboard
from eval.config import EvalConfig
from eval.metrics import strip_thinking
from eval.tasks import get_task
from train.modeling import load_model, load_processor


def run_key(cfg: EvalConfig, ck, spec) -> str:
    payload = {"path": ck.path, "adapter": ck.adapter, "task": asdict(spec),
               "generation": asdict(cfg.generation), "vision": asdict(cfg.vision), "dtype": cfg.dtype}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_cached(path: Path, key: str) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if record.get("key") == key:
                done[record["id"]] = record
    return done


@torch.no_grad()
def generate_batch(model, processor, examples: list[dict], gen) -> list[str]:
    batch = collate(examples, processor.tokenizer.pad_token_id, padding_side="left")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    out = model.generate(**batch, max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample)
    new_tokens = out[:, batch["input_ids"].shape[1]:]
    return processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def evaluate_task(model, processor, cfg: EvalConfig, ck, spec, out_dir: Path) -> dict:
    task = get_task(spec.name)
    samples = task.load(spec)[: spec.limit]
    budget = cfg.vision.with_overrides(spec.vision, f"tasks.{spec.name}.vision")
    encoder = SampleEncoder(processor, budget, max_seq_len=10**9)
    key = run_key(cfg, ck, spec)
    pred_path = out_dir / "predictions" / ck.name / f"{spec.name}.jsonl"
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_cached(pred_path, key)
    todo = [s for s in samples if s.id not in done]

    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"{ck.name}/{spec.name}", disable=not cfg.progress or not todo,
               dynamic_ncols=True, mininterval=1.0)
    with open(pred_path, "a") as f, bar:
        for i in range(0, len(todo), cfg.generation.batch_size):
            chunk, examples, records = todo[i:i + cfg.generation.batch_size], [], []
            for s in chunk:
                try:
                    examples.append((s, encoder.encode_prompt(s)))
                except (OSError, ValueError) as e:
                    records.append({"id": s.id, "prediction": "", "error": f"{type(e).__name__}: {e}"})
            if examples:
                texts = generate_batch(model, processor, [e for _, e in examples], cfg.generation)
                for (s, _), text in zip(examples, texts):
                    score, parsed = task.score(strip_thinking(text), s)
                    records.append({"id": s.id, "prediction": text, "answer": s.answer(),
                                    "score": score, "parsed": parsed})
            for r in records:
                r["key"] = key
                f.write(json.dumps(r) + "\n")
                done[r["id"]] = r
            f.flush()
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0

    scores, unparsed, failed = [], 0, 0
    groups: dict[str, list[float]] = {}
    for s in samples:
        record = done[s.id]
        if "error" in record:
            failed += 1
            score = 0.0
        else:
            score, parsed = task.score(strip_thinking(record["prediction"]), s)
            unparsed += not parsed
        scores.append(score)
        for group in breakdown_keys(task, s):
            groups.setdefault(group, []).append(score)
    row = {"checkpoint": ck.name, "task": spec.name, "metric": task.metric,
           "score": sum(scores) / len(scores), "n": len(scores), "unparsed": unparsed,
           "failed": failed, "generated": len(todo), "seconds": round(seconds, 2),
           "model": ck.path, "adapter": ck.adapter, "key": key}
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


def evaluate(cfg: EvalConfig) -> list[dict]:
    out_dir = Path(cfg.output_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    all_rows = []
    for ck in cfg.checkpoints:
        processor = load_processor(ck.path)
        model = load_model(ck.path, cfg.dtype, cfg.attn_implementation, adapter=ck.adapter)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        rows = []
        for spec in cfg.tasks:
            row = evaluate_task(model, processor, cfg, ck, spec, out_dir)
            print(f"[eval] {ck.name} {row['task']}: {row['metric']}={row['score']:.4f} "
                  f"(n={row['n']}, unparsed={row['unparsed']}, failed={row['failed']})", flush=True)
            rows.append(row)
        (out_dir / "results" / f"{ck.name}.json").write_text(json.dumps(rows, indent=1))
        all_rows += rows
        del model
    if cfg.leaderboard:
        rows = leaderboard.collect(out_dir / "results")
        md, js = leaderboard.write(rows, cfg.leaderboard)
        print(f"[eval] leaderboard: {md} {js}\n\n{md.read_text()}", flush=True)
    return all_rows
