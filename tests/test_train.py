"""The training entry point: single process, checkpoints and resume, 2-process gloo DDP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import launch
from tests.helpers.launch import TRAIN_CONFIG, losses, metrics


def run_train(tiny, corpus, out: Path, *overrides, nproc: int = 1, check=True, config=TRAIN_CONFIG,
              faults: tuple = ()):
    """The demo config on the tiny dense model, batch 4; ``corpus=None``: the data section
    comes from ``config`` alone (e.g. a mixture)."""
    return launch.run_train(tiny["dense"], out, "train.batch_size=4", *overrides,
                            data=corpus["train"] if corpus is not None else None, nproc=nproc,
                            config=config, faults=faults, check=check)


def test_lora_run_saves_adapter_checkpoints_and_metrics(tiny, corpus, tmp_path):
    out = tmp_path / "run"
    run_train(tiny, corpus, out, "train.max_steps=4", "train.save_every=2", "train.keep_last=1")
    assert (out / "final/adapter_model.safetensors").is_file()
    assert (out / "final/adapter_config.json").is_file()
    assert (out / "final/processor_config.json").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # keep_last=1
    assert not list(out.glob(".tmp-*"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in rows)
    assert rows[-1]["lr"] == 0.0  # linear/cosine decay reaches 0 at max_steps


def test_resume_continues_with_identical_losses(tiny, corpus, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(tiny, corpus, full, "train.max_steps=6")
    run_train(tiny, corpus, part, "train.max_steps=6", "train.save_every=3")
    # As if killed while saving step 5: only checkpoint-3 is complete, a partial save lingers.
    shutil.rmtree(part / "checkpoint-6")
    (part / ".tmp-checkpoint-5" / "model").mkdir(parents=True)
    (part / "metrics.jsonl").write_text("")
    run_train(tiny, corpus, part, "train.max_steps=6", "train.resume=auto")
    resumed, reference = losses(part), losses(full)
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_two_process_gloo_equals_one_process(tiny, corpus, tmp_path):
    """2 ranks x batch 2 sees the same samples per step as 1 rank x batch 4, and the loss is
    the global token mean either way, so the runs agree step by step."""
    one, two = tmp_path / "one", tmp_path / "two"
    launch.train_here(tiny["dense"], one, "train.batch_size=4", "train.max_steps=3",
                      data=corpus["train"])
    run_train(tiny, corpus, two, "train.max_steps=3", "train.batch_size=2", nproc=2)
    assert (two / "final/adapter_model.safetensors").is_file()
    a, b = losses(one), losses(two)
    for step in (1, 2, 3):
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_missing_image_fails_at_start_or_is_skipped(tiny, corpus, tmp_path):
    records = json.loads(corpus["train"].read_text())
    records[5]["image"] = "images/train/gone.png"
    bad = corpus["train"].parent / "train_missing.json"
    bad.write_text(json.dumps(records))
    proc = run_train(tiny, {"train": bad}, tmp_path / "err", "train.max_steps=2", check=False)
    assert proc.returncode == 3
    assert f"{bad}: sample 5" in proc.stderr and "gone.png" in proc.stderr
    assert not (tmp_path / "err/final").exists()
    run_train(tiny, {"train": bad}, tmp_path / "skip", "train.max_steps=2",
              "data.on_bad_sample=skip")
    assert (tmp_path / "skip/final/adapter_model.safetensors").is_file()


def test_full_fine_tune_of_moe_resumes_with_identical_losses(tiny, corpus, tmp_path):
    """lora.enabled=false trains every weight (here the tiny MoE); resume restores them all."""
    full, part = tmp_path / "full", tmp_path / "part"
    common = [f"model.path={tiny['moe']}", "lora.enabled=false", "train.max_steps=4",
              "train.batch_size=2"]
    run_train(tiny, corpus, full, *common)
    run_train(tiny, corpus, part, *common, "train.save_every=2")
    shutil.rmtree(part / "checkpoint-4")
    (part / "metrics.jsonl").write_text("")
    run_train(tiny, corpus, part, *common, "train.resume=auto")
    resumed, reference = losses(part), losses(full)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_packed_mixture_trains_and_resumes_with_identical_losses(tiny, corpus, tmp_path):
    """Two weighted sources packed into rows of 1024 tokens: the run logs real tokens only,
    and a resume from step 2 sees the same rows (losses equal an uninterrupted run)."""
    import yaml

    cfg = yaml.safe_load(TRAIN_CONFIG.read_text())
    cfg["data"] = {"sources": [{"path": str(corpus["train"]), "weight": 1.0},
                               {"path": str(corpus["eval"]), "weight": 2.0, "name": "extra",
                                "vision": {"max_pixels": 96 * 96}}],
                   "vision": cfg["data"]["vision"], "max_seq_len": 1024,
                   "packing": True, "pack_tokens": 1024}
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump(cfg))
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train.max_steps=4", "train.batch_size=1", "train.grad_accum=2"]
    proc = run_train(tiny, None, full, *common, config=config)
    assert "[data] 60 samples (train: 48, extra: 12)" in proc.stdout
    run_train(tiny, None, part, *common, "train.save_every=2", config=config)
    shutil.rmtree(part / "checkpoint-4")
    (part / "metrics.jsonl").write_text("")
    run_train(tiny, None, part, *common, "train.resume=auto", config=config)
    resumed, reference = losses(part), losses(full)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step
    rows = metrics(full)
    assert all(700 < r["tokens_per_step"] <= 2 * 1024 for r in rows)  # two well-filled rows per step


def test_nan_loss_step_is_skipped_or_stops_the_run(tiny, corpus, tmp_path):
    skip = tmp_path / "skip"
    proc = run_train(tiny, corpus, skip, "train.max_steps=3", faults=("--nan-steps", "2"))
    assert "step 2: non-finite loss; step skipped" in proc.stdout
    rows = metrics(skip)
    assert [r["nan_steps_skipped"] for r in rows] == [0, 1, 1]
    assert rows[1]["loss"] is None and rows[2]["loss"] > 0
    assert rows[1]["lr"] == rows[0]["lr"] != rows[2]["lr"]  # the skipped step left the schedule
    assert (skip / "final/adapter_model.safetensors").is_file()
    stop = run_train(tiny, corpus, tmp_path / "stop", "train.max_steps=3", "train.on_nan=stop",
                     faults=("--nan-steps", "2"), check=False)
    assert stop.returncode != 0
    assert "step 2: non-finite loss; stopping (train.on_nan=stop)" in stop.stderr


def test_loss_curve_and_tensorboard_written(tiny, corpus, tmp_path):
    out = tmp_path / "obs"
    run_train(tiny, corpus, out, "train.max_steps=2", "logging.report_to=[tensorboard]")
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
