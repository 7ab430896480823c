"""How eval runs: checkpoint kinds detected from files, data-parallel under torchrun equal to
one process, and a killed run that resumes to the uninterrupted scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from eval.checkpoints import resolve_checkpoint
from tests.helpers.launch import run_eval

TASKS = ("synthetic_vqa", "synthetic_grounding", "synthetic_doc")


# --- checkpoint kinds ------------------------------------------------------------------------

def _adapter(folder: Path, base: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return folder


def test_base_models_dense_and_moe(tiny):
    dense, moe = resolve_checkpoint(str(tiny["dense"])), resolve_checkpoint(str(tiny["moe"]))
    assert (dense.kind, dense.arch, dense.adapter) == ("base", "dense", None)
    assert (moe.kind, moe.arch) == ("base", "moe")
    assert dense.processor == str(tiny["dense"])


def test_adapter_folder_alone_names_its_base(tiny, tmp_path):
    adapter = _adapter(tmp_path / "run/final", tiny["moe"])
    for path in (adapter, tmp_path / "run"):  # the adapter, or the training run holding it
        ck = resolve_checkpoint(str(path))
        assert (ck.kind, ck.arch, ck.model, ck.adapter) == ("lora", "moe", str(tiny["moe"]), str(adapter))
        assert ck.processor == str(tiny["moe"])  # the adapter folder saved no processor


def test_base_plus_separate_adapter(tiny, tmp_path):
    adapter = _adapter(tmp_path / "adapter", tmp_path / "elsewhere")
    ck = resolve_checkpoint(str(tiny["dense"]), str(adapter))
    assert (ck.kind, ck.model, ck.adapter) == ("lora", str(tiny["dense"]), str(adapter))
    with pytest.raises(ValueError, match="no adapter_config.json"):
        resolve_checkpoint(str(tiny["dense"]), str(tiny["dense"]))


def test_mid_run_checkpoints_and_full_fine_tunes(tiny, tmp_path):
    run_config = json.dumps({"model": {"path": str(tiny["dense"])}})
    lora_step = tmp_path / "lora/checkpoint-4"
    _adapter(lora_step / "model", Path("/not/used"))  # the run's config names the base
    (lora_step / "train_config.json").write_text(run_config)
    ck = resolve_checkpoint(str(lora_step))
    assert (ck.kind, ck.model, ck.adapter) == ("lora", str(tiny["dense"]), str(lora_step / "model"))

    full_step = tmp_path / "full/checkpoint-4"
    shutil.copytree(tiny["dense"], full_step / "model")
    (full_step / "train_config.json").write_text(run_config)
    ck = resolve_checkpoint(str(full_step))
    assert (ck.kind, ck.model, ck.arch) == ("full", str(full_step / "model"), "dense")

    final = tmp_path / "full/final"  # the run's final/: a fine-tune, not a base model
    shutil.copytree(tiny["dense"], final)
    (tmp_path / "full/config.json").write_text(run_config)  # the trainer writes the run config
    assert resolve_checkpoint(str(tmp_path / "full")).kind == "full"

    zero3_step = tmp_path / "zero3/checkpoint-4"
    (zero3_step / "model").mkdir(parents=True)  # ZeRO-3 full weights: only DeepSpeed shards
    (zero3_step / "deepspeed").mkdir()
    (zero3_step / "deepspeed/latest").write_text("state")
    (zero3_step / "train_config.json").write_text(run_config)
    with pytest.raises(ValueError, match="python -m train.export"):
        resolve_checkpoint(str(zero3_step))


def test_not_a_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no adapter_config.json, no config.json"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_checkpoint(str(tmp_path / "missing"))


# --- data parallel and resume ----------------------------------------------------------------

def write_config(tiny, corpus, out: Path, batch_size: int = 2) -> Path:
    cfg = {"output_dir": str(out), "progress": False,
           "checkpoints": [{"name": "base", "path": str(tiny["dense"])}],
           "tasks": [{"name": t, "data": str(corpus["eval"])} for t in TASKS],
           "generation": {"batch_size": batch_size, "max_new_tokens": 8},
           "vision": {"min_pixels": 4096, "max_pixels": 65536}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def outcome(out: Path) -> tuple[list[tuple], dict]:
    """What must not depend on how the run went: the scores and every sample's prediction."""
    rows = json.loads((out / "results/base.json").read_text())
    scores = [(r["task"], r["score"], r["n"], r["unparsed"], r["failed"], r.get("breakdown"))
              for r in rows]
    predictions = {}
    for task in TASKS:
        for line in (out / f"predictions/base/{task}.jsonl").read_text().splitlines():
            record = json.loads(line)
            predictions[(task, record["id"])] = record["prediction"]
    return scores, predictions


@pytest.fixture(scope="module")
def uninterrupted(tiny, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "eval"
    run_eval(write_config(tiny, corpus, out))
    return outcome(out)


def test_data_parallel_equals_single_process(tiny, corpus, tmp_path, uninterrupted):
    out = tmp_path / "dp"
    run_eval(write_config(tiny, corpus, out), nproc=2)
    assert outcome(out) == uninterrupted
    assert not list((out / "predictions/base").glob("*.rank*.jsonl"))  # parts merged away
    for task in TASKS:  # each sample generated by one rank only
        assert len((out / f"predictions/base/{task}.jsonl").read_text().splitlines()) == 4
    rows = json.loads((out / "results/base.json").read_text())
    assert [(r["generated"], r["processes"]) for r in rows] == [(4, 2)] * 3


def test_killed_data_parallel_run_resumes_to_identical_scores(tiny, corpus, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    config = write_config(tiny, corpus, out)
    # Each rank SIGKILLs itself after its first batch of the first task (torchrun may take the
    # other rank down first, so one part may be short).
    killed = run_eval(config, nproc=2, faults=("--kill-after-batches", "1"), check=False)
    assert killed.returncode != 0
    parts = sorted((out / "predictions/base").glob("synthetic_vqa.rank*.jsonl"))
    finished = sum(_complete_lines(p) for p in parts)
    assert parts and 2 <= finished <= 4
    assert not (out / "results/base.json").exists()

    run_eval(config)  # one process picks up what the two left
    rows = json.loads((out / "results/base.json").read_text())
    assert [r["generated"] for r in rows] == [4 - finished, 4, 4]
    assert outcome(out) == uninterrupted


def _complete_lines(path: Path) -> int:
    n = 0
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
            n += 1
        except json.JSONDecodeError:
            pass  # cut by the kill
    return n


def test_killed_run_mid_task_loses_only_the_unfinished_batch(tiny, corpus, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    config = write_config(tiny, corpus, out, batch_size=1)
    killed = run_eval(config, faults=("--kill-after-batches", "3"), check=False)
    assert killed.returncode == -9
    assert len((out / "predictions/base/synthetic_vqa.jsonl").read_text().splitlines()) == 3
    run_eval(config)
    rows = json.loads((out / "results/base.json").read_text())
    assert [r["generated"] for r in rows] == [1, 4, 4]
    assert outcome(out) == uninterrupted


# --- Thinking checkpoints --------------------------------------------------------------------

def test_thinking_checkpoint_cut_off_mid_reasoning_is_unparsed_not_guessed(tiny, corpus, tmp_path):
    """A Thinking template opens <think> in the prompt; with max_new_tokens too small for the
    reasoning to close, every reply is scored wrong and counted, whatever it contains."""
    from data.configio import load_config
    from data.processor import save_processor
    from eval.config import EvalConfig
    from eval.runner import evaluate

    thinking = tmp_path / "thinking"
    shutil.copytree(tiny["dense"], thinking)
    save_processor(thinking, "qwen3_vl_thinking")
    cfg = load_config(EvalConfig, None, [
        f"output_dir={tmp_path}/eval", f"checkpoints=[{{name: t, path: {thinking}}}]",
        f"tasks=[{{name: synthetic_vqa, data: {corpus['eval']}}}]", "progress=false",
        "generation.max_new_tokens=4"])
    [row] = evaluate(cfg)
    assert (row["n"], row["thinking_truncated"], row["unparsed"], row["score"]) == (4, 4, 4, 0.0)
    records = [json.loads(x) for x in (tmp_path / "eval/predictions/t/synthetic_vqa.jsonl").read_text().splitlines()]
    assert all(r["thinking_truncated"] and r["parsed"] is False for r in records)


# --- generation failures ---------------------------------------------------------------------

def test_a_sample_that_fails_to_generate_is_recorded_and_retried_on_rerun(tiny, corpus, tmp_path):
    """A batch whose generation raises is retried one sample at a time: only the culprit is
    recorded as failed, the run goes on, and the next run tries the culprit again."""
    from data.configio import load_config
    from eval.config import EvalConfig
    from eval.generate import HFGenerator
    from eval.runner import evaluate_task

    class FailsOnOneSample(HFGenerator):
        broken, victim, victim_inputs = True, "eval-doc-00002", set()

        def prepare(self, sample, budget):
            prepared = super().prepare(sample, budget)
            if sample.id == self.victim:
                self.victim_inputs.add(id(prepared))
            return prepared

        def generate(self, prepared):
            if self.broken and any(id(p) in self.victim_inputs for p in prepared):
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().generate(prepared)

    cfg = load_config(EvalConfig, None, [
        f"checkpoints=[{{name: base, path: {tiny['dense']}}}]",
        f"tasks=[{{name: synthetic_doc, data: {corpus['eval']}}}]", "progress=false",
        "generation.batch_size=4", "generation.max_new_tokens=4"])
    generator = FailsOnOneSample(resolve_checkpoint(str(tiny["dense"])), cfg, torch.device("cpu"))
    spec = cfg.tasks[0]

    row = evaluate_task(generator, cfg, cfg.checkpoints[0], spec, tmp_path)
    assert (row["failed"], row["n"]) == (1, 4)
    records = [json.loads(x) for x in (tmp_path / "predictions/base/synthetic_doc.jsonl").read_text().splitlines()]
    [failed] = [r for r in records if "error" in r]
    assert failed["id"] == generator.victim
    assert failed["error"] == "generation failed: RuntimeError: CUDA out of memory (simulated)"

    generator.broken = False  # the next run retries only the failed sample
    row = evaluate_task(generator, cfg, cfg.checkpoints[0], spec, tmp_path)
    assert (row["failed"], row["generated"]) == (0, 1)

    # Every sample failing alone too: the fault is not in the data; the run stops.
    generator.generate = lambda prepared: (_ for _ in ()).throw(RuntimeError("driver gone"))
    with pytest.raises(RuntimeError, match="driver gone"):
        evaluate_task(generator, cfg, cfg.checkpoints[0], spec, tmp_path / "other")
