"""A training run cannot silently spoil its own or another run's results (#13).

An output folder holds one run: reusing it needs train.resume or train.overwrite, a live run
holds it locked, and every file names its run. A checkpoint resumes only the config it fits and
cannot run code. Nothing is saved from NaN weights or during a NaN streak; a changed lr applies
on resume; a collapsed run is flagged. A full disk, a missing model folder and a half-deleted
checkpoint give one clear message or are cleaned up; configs refuse values nobody means.

Runs are in-process (``train.trainer.train`` on the tiny dense model, 1-4 steps, a few seconds
each); only a live concurrent run and the 2-rank refusal use real processes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data.configio import ConfigError, config_main, load_config, to_dict
from tests.helpers import launch
from tests.helpers.checkpoint_faults import CreatesFile, SmallEngine, full_disk_on
from tests.helpers.faults import TrainFaults
from tests.helpers.launch import QUICK_TRAIN, TRAIN_CONFIG
from train import checkpoint as ckpt
from train import layout, run_folder
from train.config import Config
from train.distributed import DistInfo
from train.errors import CheckpointError, NonFiniteError, RunFolderError
from train.hooks import TrainHooks
from train.trainer import train

CPU1 = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def config(tiny, corpus, out: Path, *overrides: str) -> Config:
    """The demo config on the tiny dense model, batch 2, no plot."""
    return load_config(Config, TRAIN_CONFIG, [
        f"model.path={tiny['dense']}", f"data.train={corpus['train']}", f"train.output_dir={out}",
        *QUICK_TRAIN, "train.batch_size=2", "logging.loss_plot=false", *overrides])


def rows(out: Path) -> list[dict]:
    return launch.metrics(out)


@pytest.fixture(scope="module")
def finished(tiny, corpus, tmp_path_factory) -> Path:
    """A finished 2-step run, a checkpoint after each step, constant lr (tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(config(tiny, corpus, out, "train.max_steps=2", "train.save_every=1",
                 "train.lr_schedule=constant"))
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# --- 1. One run per output folder ------------------------------------------------------------

def test_every_file_of_a_run_names_its_run_id(finished):
    run_id = json.loads((finished / "config.json").read_text())["run_id"]
    assert run_id and all(r["run_id"] == run_id for r in rows(finished))
    for checkpoint in layout.list_checkpoints(finished):
        assert ckpt.read_trainer_state(checkpoint)["run_id"] == run_id
        assert json.loads((checkpoint / "train_config.json").read_text())["run_id"] == run_id
        assert json.loads((checkpoint / "complete.json").read_text())["run_id"] == run_id
    assert not (finished / "run.lock").exists()  # released at the end


def test_reused_output_dir_is_refused_unless_resume_or_overwrite(tiny, corpus, finished, tmp_path,
                                                                   capsys):
    out = copy_of(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "metrics.jsonl", out / "config.json")}
    with pytest.raises(RunFolderError) as refused:
        train(config(tiny, corpus, out, "train.max_steps=2"))
    message = str(refused.value)
    assert f"train.output_dir {out} holds a previous run" in message
    assert "train.resume=auto" in message and "train.overwrite=true" in message
    assert {p.name: p.read_bytes() for p in (out / "metrics.jsonl", out / "config.json")} == before
    assert [p.name for p in layout.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]

    old_id = rows(out)[0]["run_id"]
    train(config(tiny, corpus, out, "train.max_steps=1", "train.warmup_steps=0", "train.overwrite=true"))
    assert f"train.overwrite=true: deleted the previous run's files in {out}" in capsys.readouterr().out
    new_rows = rows(out)
    assert [r["step"] for r in new_rows] == [1] and new_rows[0]["run_id"] != old_id
    assert [p.name for p in layout.list_checkpoints(out)] == ["checkpoint-1"]
    assert ckpt.read_trainer_state(out / "checkpoint-1")["run_id"] == new_rows[0]["run_id"]


def test_folder_in_use_is_refused_and_a_dead_holder_taken_over(tiny, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / "run.lock"
    here = socket.gethostname()
    lock.write_text(json.dumps({"host": here, "pid": os.getpid(), "run_id": "other-run"}))
    with pytest.raises(RunFolderError, match=rf"output_dir {out} is in use by run other-run "
                                             rf"\(pid {os.getpid()} on host {here}\)"):
        train(config(tiny, corpus, out, "train.max_steps=1", "train.warmup_steps=0"))
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "run_id": "remote-run"}))
    with pytest.raises(RunFolderError, match=r"in use by run remote-run \(pid 1 on host elsewhere\)"):
        train(config(tiny, corpus, out, "train.max_steps=1", "train.warmup_steps=0"))
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing written

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs on this host: a killed run's lock
    lock.write_text(json.dumps({"host": here, "pid": gone.pid, "run_id": "killed-run"}))
    train(config(tiny, corpus, out, "train.max_steps=1", "train.warmup_steps=0"))
    assert f"took over {lock}: run killed-run (pid {gone.pid} on this host) is no longer running" \
        in capsys.readouterr().out
    assert (out / "final/adapter_model.safetensors").is_file() and not lock.exists()


def test_second_run_on_a_folder_in_use_is_refused(tiny, corpus, tmp_path):
    """A real first run (its own process, still loading or training) holds the folder."""
    out = tmp_path / "run"
    args = [f"model.path={tiny['dense']}", f"data.train={corpus['train']}",
            f"train.output_dir={out}", *QUICK_TRAIN, "train.max_steps=500"]
    first = subprocess.Popen(launch.entry("train") + [str(TRAIN_CONFIG), *args], cwd=launch.ROOT,
                             env=launch.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started"
            time.sleep(0.2)
        with pytest.raises(RunFolderError, match=rf"is in use by run \S+ \(pid {first.pid} on host"):
            train(config(tiny, corpus, out, "train.max_steps=1", "train.warmup_steps=0"))
    finally:
        first.kill()
        first.wait()


def test_two_process_run_refuses_a_reused_folder_on_every_rank(tiny, corpus, finished, tmp_path):
    """Rank 0 decides about the folder and every rank gets the refusal (none waits forever)."""
    out = copy_of(finished, tmp_path)
    args = [f"model.path={tiny['dense']}", f"data.train={corpus['train']}",
            f"train.output_dir={out}", *QUICK_TRAIN, "train.max_steps=2"]
    proc = launch.run(launch.entry("train", nproc=2) + [str(TRAIN_CONFIG), *args], check=False,
                      timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count(f"[train] error: train.output_dir {out} holds a previous run") >= 2


def test_resume_refuses_a_checkpoint_of_another_config(tiny, corpus, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    with pytest.raises(CheckpointError) as refused:
        train(config(tiny, corpus, out, "train.max_steps=3", "train.resume=auto", "lora.r=8",
                     f"data.train={corpus['eval']}"))
    message = str(refused.value)
    assert f"{out / 'checkpoint-2'} was trained with another config" in message
    assert "lora.r: 4 in the checkpoint, 8 now" in message
    assert "data sources:" in message and "train.json" in message and "eval.json" in message
    listed = message.split(". Set these keys")[0]
    assert "lora.alpha" not in listed and "model.path" not in listed  # only what differs
    assert "train.resume_allow_changes=[model.path, data]" in message

    # A moved data folder (or model folder) can be allowed; the LoRA shape never.
    with pytest.raises(CheckpointError, match="lora.r: 4 in the checkpoint, 8 now") as refused:
        train(config(tiny, corpus, out, "train.max_steps=3", "train.resume=auto", "lora.r=8",
                     f"data.train={corpus['eval']}", "train.resume_allow_changes=[data]"))
    assert "data sources" not in str(refused.value)
    moved = config(tiny, corpus, out, "train.max_steps=3", "train.resume=auto",
                   f"data.train={corpus['eval']}", "train.resume_allow_changes=[data]")
    claim = run_folder.claim(moved, to_dict(moved))
    run_folder.release_lock(claim.lock)
    assert claim.resume_from == out / "checkpoint-2"
    assert any(note.startswith(f"resuming {out / 'checkpoint-2'} although data sources:")
               and note.endswith("(train.resume_allow_changes)") for note in claim.notes)

    # No checkpoint to resume, but the folder's config.json is of another run: refused too.
    for checkpoint in layout.checkpoint_folders(out):
        shutil.rmtree(checkpoint)
    with pytest.raises(RunFolderError, match=r"holds no complete checkpoint, and its config.json "
                                             r"is of another run: lora.r: 4 in the checkpoint"):
        train(config(tiny, corpus, out, "train.max_steps=3", "train.resume=auto", "lora.r=8"))


# --- 2. Never a NaN model saved as a result --------------------------------------------------

def test_fp16_without_deepspeed_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"use model.dtype: bfloat16, or DeepSpeed .*which "
                                          r"scales fp16 losses"):
        load_config(Config, None, ["model.path=x", "data.train=y", "model.dtype=float16"])
    load_config(Config, None, ["model.path=x", "data.train=y", "model.dtype=float16",
                               "distributed.deepspeed=zero2"])


def test_nan_weights_are_never_saved(tiny, corpus, tmp_path):
    """fp16 in the plain engine (validation bypassed) spoils the weights at step 1 while the
    loss is still finite: the run stops at the first save, naming the step, and writes no
    checkpoint and no final/."""
    out = tmp_path / "run"
    cfg = config(tiny, corpus, out, "train.max_steps=3", "train.save_every=1")
    cfg.model.dtype = "float16"
    with pytest.raises(NonFiniteError, match=r"step 1: \d+ trainable weight tensors hold NaN/inf"
                                             r".*not writing checkpoint-1 or final/"):
        train(cfg)
    assert not layout.checkpoint_folders(out) and not (out / "final").exists()
    assert not list(out.glob(".tmp-*"))


def test_zero3_shards_are_checked_for_nan():
    from train.health import nonfinite_weights

    model = torch.nn.Linear(2, 2)
    model.weight.ds_tensor = torch.tensor([1.0, float("nan")])  # this rank's ZeRO-3 shard
    model.bias.requires_grad_(False)
    model.bias.data.fill_(float("nan"))  # frozen: not a trained result
    assert nonfinite_weights(model) == ["weight"]


# --- 3. NaN recovery, lr on resume, collapse -------------------------------------------------

def test_no_checkpoint_during_a_nan_streak(tiny, corpus, tmp_path, capsys):
    """keep_last=1: saving at step 3 (skipped, NaN) would delete checkpoint-2, the good one."""
    out = tmp_path / "run"
    cfg = config(tiny, corpus, out, "train.max_steps=5", "train.save_every=1", "train.keep_last=1",
                 "train.max_nan_steps=2")
    with pytest.raises(NonFiniteError, match="step 4: non-finite loss; stopping"):
        train(cfg, TrainFaults(nan_steps={3, 4}))
    assert "step 3: not saving checkpoint-3: this is non-finite step 1 in a row; the last " \
           "checkpoint (checkpoint-2) stays" in capsys.readouterr().out
    assert [p.name for p in layout.checkpoint_folders(out)] == ["checkpoint-2"]


def test_changed_lr_applies_on_resume(tiny, corpus, finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    assert [r["lr"] for r in rows(out)] == [3e-3, 3e-3]
    train(config(tiny, corpus, out, "train.max_steps=4", "train.resume=auto",
                 "train.lr_schedule=constant", "train.lr=1e-3"))
    assert "the config's peak lr (vision 0.001, merger 0.001, llm 0.001) differs from the " \
           "checkpoint's (vision 0.003, merger 0.003, llm 0.003): the schedule continues from " \
           "step 2" in capsys.readouterr().out
    resumed = rows(out)
    assert [(r["step"], r["lr"]) for r in resumed[2:]] == [(3, 1e-3), (4, 1e-3)]
    assert len({r["run_id"] for r in resumed}) == 1  # a resumed run keeps its id
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 1e-3


def test_non_finite_config_numbers_are_refused(tmp_path):
    for override, key in (("train.lr=.nan", "train.lr"), ("train.lr=inf", "train.lr"),
                          ("train.vision_lr=-.inf", "train.vision_lr")):
        with pytest.raises(ConfigError, match=rf"'{key}' must be a finite number"):
            load_config(Config, None, ["model.path=x", "data.train=y", override])
    path = tmp_path / "mix.yaml"
    path.write_text("model: {path: m}\ndata:\n  sources:\n    - {path: a.json, vision: {fps: .nan}}\n")
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].vision.fps' must be a finite number"):
        load_config(Config, path)


class ZeroLoss(TrainHooks):
    """Backward on 0 x loss: gradient norm exactly 0, nothing moves (as a saturated model)."""

    def loss(self, step, loss, rank, world_size):
        return loss * 0.0


def test_collapsed_run_is_flagged_not_stopped(tiny, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    train(config(tiny, corpus, out, "train.max_steps=3", "train.collapse_steps=2"), ZeroLoss())
    assert [(r["grad_norm"], r["collapsed"]) for r in rows(out)] == \
        [(0.0, False), (0.0, True), (0.0, True)]
    console = capsys.readouterr().out
    assert console.count("the run looks collapsed") == 1
    assert "step 2: the run looks collapsed: 2 steps in a row" in console
    assert (out / "final/adapter_model.safetensors").is_file()


# --- 4. A checkpoint cannot run code ---------------------------------------------------------

@pytest.mark.parametrize("name", ["trainer_state.pt", "rng_rank0.pt", "optimizer.pt",
                                  "deepspeed/state/zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_crafted_pickle_in_a_checkpoint_is_refused(tiny, corpus, finished, tmp_path, name):
    out = copy_of(finished, tmp_path)
    crafted = out / "checkpoint-2" / name
    crafted.parent.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "code-ran"
    torch.save({"step": 2, "payload": CreatesFile(marker)}, crafted)
    # Whoever can write the file can update complete.json too (else the checkpoint is merely
    # incomplete, and deleted at start).
    manifest = out / "checkpoint-2/complete.json"
    if manifest.is_file():
        complete = json.loads(manifest.read_text())
        complete["files"][name] = crafted.stat().st_size
        manifest.write_text(json.dumps(complete))
    with pytest.raises(CheckpointError, match=rf"{crafted}: it names .*open.*refused to load it"):
        train(config(tiny, corpus, out, "train.max_steps=3", "train.resume=auto"))
    assert not marker.exists()


def test_every_checkpoint_read_refuses_code(tmp_path):
    """Each reader on its own (weights_only), not only the scan before a resume."""
    from train.safeload import load_file

    marker = tmp_path / "code-ran"
    (tmp_path / "checkpoint-1").mkdir()
    torch.save({"step": 1, "loss": CreatesFile(marker)}, tmp_path / "checkpoint-1/trainer_state.pt")
    for read in (lambda: load_file(tmp_path / "checkpoint-1/trainer_state.pt"),
                 lambda: ckpt.read_trainer_state(tmp_path / "checkpoint-1"),
                 lambda: ckpt.stale_checkpoints(tmp_path, keep_last=1, keep_best=True)):
        with pytest.raises(CheckpointError, match="trainer_state.pt: it names"):
            read()
    assert not marker.exists()


def test_export_refuses_a_crafted_deepspeed_shard(tiny, tmp_path, capsys):
    from train.export.__main__ import main

    checkpoint = tmp_path / "run/checkpoint-3"
    (checkpoint / "deepspeed/state").mkdir(parents=True)
    (checkpoint / "deepspeed/latest").write_text("state")
    (checkpoint / "train_config.json").write_text(json.dumps(
        {"model": {"path": str(tiny["dense"]), "dtype": "float32"}, "lora": {"enabled": False}}))
    shard = checkpoint / "deepspeed/state/zero_pp_rank_0_mp_rank_00_model_states.pt"
    marker = tmp_path / "code-ran"
    torch.save({"module": CreatesFile(marker)}, shard)
    assert main([str(checkpoint), "--out", str(tmp_path / "export"), "--no-verify"]) == 2
    assert f"{shard}: it names" in capsys.readouterr().err
    assert not marker.exists()


# --- 5. Clear errors and clean-ups -----------------------------------------------------------

@pytest.mark.parametrize("where", ["save_weights", "save", "trainer_state.pt"])
def test_disk_full_while_saving_is_one_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                              where):
    ckpt.save_checkpoint(tmp_path, 1, SmallEngine(), CPU1, keep_last=2)
    engine = SmallEngine(full_disk_in=where)
    if where.endswith(".pt"):  # our own write of the trainer state
        monkeypatch.setattr(ckpt, "write_state", full_disk_on(where))
    with pytest.raises(CheckpointError) as failed:
        ckpt.save_checkpoint(tmp_path, 2, engine, CPU1, keep_last=2)
    message = str(failed.value)
    assert f"could not write checkpoint-2 in {tmp_path} (OSError: [Errno {errno.ENOSPC}]" in message
    assert re.search(r"\d+\.\d (GiB|MiB) free on that disk", message)
    assert "the last complete checkpoint (checkpoint-1) is kept" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no partial left
    assert ckpt.resolve_resume(tmp_path, "auto").name == "checkpoint-1"


def test_missing_model_folder_fails_before_anything_is_written(tiny, corpus, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny, corpus, out, f"model.path={tmp_path}/models/qwen3vl-dense")
    with pytest.raises(RunFolderError, match=rf"model.path {tmp_path}/models/qwen3vl-dense: no "
                                             rf"such folder .*fix model.path"):
        train(cfg)
    with pytest.raises(RunFolderError, match=rf"train.resume={tmp_path}/checkpoint-9: no such folder"):
        train(config(tiny, corpus, out, f"train.resume={tmp_path}/checkpoint-9"))
    assert not out.exists()


def test_half_deleted_checkpoints_are_cleaned_and_never_resumed(tiny, corpus, finished, tmp_path,
                                                                capsys):
    """As a kill during retention's deletion (before it renamed first) leaves them."""
    out = copy_of(finished, tmp_path)
    (out / "checkpoint-2/model/adapter_model.safetensors").unlink()
    (out / ".deleting-checkpoint-0/model").mkdir(parents=True)
    (out / ".tmp-checkpoint-3").mkdir()
    assert [p.name for p in layout.list_checkpoints(out)] == ["checkpoint-1"]
    train(config(tiny, corpus, out, "train.max_steps=2", "train.resume=auto"))
    console = capsys.readouterr().out
    assert "removed what interrupted saves left" in console
    assert "checkpoint-2 (1 of its files are missing or cut short" in console
    assert f"resumed from {out / 'checkpoint-1'} at step 1" in console
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == \
        ["checkpoint-1", "checkpoint-2"]
    assert layout.checkpoint_problem(out / "checkpoint-2") is None  # written again, complete


def test_retention_renames_before_deleting(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, SmallEngine(), CPU1, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]
    doomed = tmp_path / "checkpoint-3"
    moved = layout.deleting_checkpoint_dir(doomed)
    assert moved.name == ".deleting-checkpoint-3"
    ckpt.remove_checkpoint(doomed)
    assert not doomed.exists() and not moved.exists()


@pytest.mark.parametrize("override, message", [
    ("train.max_grad_norm=-1", r"train.max_grad_norm must be > 0 .*e.g. train.max_grad_norm=1.0"),
    ("train.save_every=-2", r"train.save_every must be >= 0 \(steps between checkpoints; 0: only"),
    ("lora.alpha=0", r"lora.alpha must be > 0 .*e.g. lora.alpha=32"),
    ("train.collapse_steps=-1", r"train.collapse_steps >= 0"),
])
def test_values_nobody_means_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Config, None, ["model.path=x", "data.train=y", override])


def test_yaml_object_tag_is_one_line_naming_file_and_line(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model:\n  path: m\ndata:\n  train: t.json\ntrain:\n"
                    f"  lr: !!python/object/apply:os.system ['touch {marker}']\n")
    assert config_main("python -m train", "", Config, run=None, argv=[str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: {path}, line 6: could not determine a constructor")
    assert "remove the tag" in err and "\n" not in err
    assert not marker.exists()
