"""Claiming ``train.output_dir`` for one run, before anything is written into it.

A folder holds one run. A second run started into it without being told what to do would
append to the first one's metrics.jsonl, have retention (highest step numbers kept) delete its
own checkpoints in favour of the old run's, and let a later ``resume=auto`` continue a
checkpoint of another config; two runs at once would overwrite each other's
``.tmp-checkpoint-N``. So, in this order, before the folder is touched:

1. ``check_paths``: the paths the config names exist (a typo in model.path fails here, not
   after config.json was written, with a hub-id error from transformers);
2. ``claim`` (rank 0; the trainer shares the outcome with every rank):
   - takes ``run.lock`` (created with O_CREAT|O_EXCL, holding host, pid and run id): a live
     holder refuses, a holder whose process is gone from this host is taken over, with a note;
   - refuses a folder holding a previous run unless ``train.resume`` says to continue it or
     ``train.overwrite`` to delete its files first;
   - removes leftovers of interrupted saves and deletions;
   - picks the checkpoint to resume, refuses one whose pickles could run code
     (``train.safeload``) or that was trained with another model, adapter or data
     (``checkpoint.config_differences``), and continues its run id.

Each run has an id (``run_id``, in config.json, every metrics.jsonl row and every checkpoint);
a resumed run keeps the id of the run it continues.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from train import checkpoint as ckpt
from train import layout
from train.errors import CheckpointError, RunFolderError
from train.safeload import check_pickles


@dataclass
class Claim:
    """What rank 0 decided about the folder, for every rank."""

    run_id: str
    resume_from: Path | None
    lock: Path
    notes: list[str] = field(default_factory=list)  # printed once by rank 0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


# --- Paths -----------------------------------------------------------------------------------

def check_paths(cfg) -> None:
    """model.path must be a hub id or a model folder (train/layout.py's hub-id rule: a path
    that starts with / . ~ or has more than one '/' is a local path); a train.resume path must
    be a folder (whether it is a complete checkpoint is the claim's to say)."""
    resume = cfg.train.resume
    if resume and resume != "auto" and not Path(resume).expanduser().is_dir():
        raise RunFolderError(f"train.resume={resume}: no such folder; give a checkpoint-N folder "
                             f"or 'auto' (the newest complete checkpoint in train.output_dir)")
    path = cfg.model.path
    if layout.is_hub_id(path):
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RunFolderError(f"model.path {path}: no such folder (a local path, not a hub id "
                             f"such as Qwen/Qwen3-VL-8B-Instruct); fix model.path")
    if not (folder / "config.json").is_file():
        raise RunFolderError(f"model.path {path}: no config.json in that folder; point "
                             f"model.path at a Hugging Face model folder (config.json + "
                             f"*.safetensors)")


# --- The claim -------------------------------------------------------------------------------

def claim(cfg, run_config: dict) -> Claim:
    """Rank 0: lock the folder, settle what a previous run left, pick the checkpoint to resume.
    ``run_config``: this run's config (as config.json will hold it)."""
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    lock, notes = take_lock(out, run_id)
    try:
        notes += settle_previous_run(out, cfg.train)
        resume_from = ckpt.resolve_resume(out, cfg.train.resume)
        if resume_from is not None:
            notes += check_resumable(resume_from, run_config)
            run_id = ckpt.read_trainer_state(resume_from).get("run_id") or run_id
            write_lock(lock, run_id)
        elif cfg.train.resume == "auto":
            notes += nothing_to_resume(out, run_config)
    except BaseException:
        release_lock(lock)
        raise
    return Claim(run_id, resume_from, lock, notes)


def settle_previous_run(out: Path, train_cfg) -> list[str]:
    """Refuse a folder holding a previous run unless the config says what to do with it;
    delete its files under ``train.overwrite``; remove leftovers of interrupted saves."""
    found = layout.previous_run(out)
    notes = []
    if found and not train_cfg.resume and not train_cfg.overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunFolderError(f"train.output_dir {out} holds a previous run ({shown}); set "
                             f"train.resume=auto to continue it (or train.resume=CHECKPOINT_DIR), "
                             f"or train.overwrite=true to delete its files and start afresh, or "
                             f"choose a new train.output_dir")
    if found and train_cfg.overwrite:
        notes.append(f"train.overwrite=true: deleted the previous run's files in {out}: "
                     f"{', '.join(delete_previous_run(out))}")
    removed = ckpt.clean_leftovers(out)
    if removed:
        notes.append(f"removed what interrupted saves left in {out}: {', '.join(removed)}")
    return notes


def delete_previous_run(out: Path) -> list[str]:
    """Delete the files a run writes (``layout.RUN_FILES`` and every checkpoint folder, complete
    or not) and nothing else; returns their names."""
    doomed = [out / name for name in layout.RUN_FILES if (out / name).exists()]
    doomed += layout.checkpoint_folders(out) + layout.leftovers(out)
    names = []
    for p in dict.fromkeys(doomed):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        names.append(p.name)
    return names


def check_resumable(checkpoint: Path, run_config: dict) -> list[str]:
    """No pickle in it could run code, and it was trained with this model, adapter and data
    (or what differs is allowed by ``train.resume_allow_changes``: returned as notes)."""
    check_pickles(checkpoint)
    saved = ckpt.saved_config(checkpoint)
    allowed = tuple(run_config.get("train", {}).get("resume_allow_changes") or ())
    differences = ckpt.config_differences(saved, run_config, allowed)
    if differences:
        raise CheckpointError(f"train.resume: {checkpoint} was trained with another config: "
                              f"{'; '.join(differences)}. Set these keys back to the "
                              f"checkpoint's values to continue it (a moved model or data "
                              f"folder: train.resume_allow_changes=[model.path, data]), or "
                              f"start a new run (a new train.output_dir, or "
                              f"train.overwrite=true to replace this one)")
    return [f"resuming {checkpoint} although {d} (train.resume_allow_changes)"
            for d in ckpt.config_differences(saved, run_config) if d not in differences]


def nothing_to_resume(out: Path, run_config: dict) -> list[str]:
    """``resume=auto`` in a folder without a complete checkpoint: start at step 0, unless the
    folder's config.json is of another config (its metrics would be mixed with ours)."""
    previous = out / layout.RUN_CONFIG
    if not previous.is_file():
        return []
    allowed = tuple(run_config.get("train", {}).get("resume_allow_changes") or ())
    differences = ckpt.config_differences(json.loads(previous.read_text()), run_config, allowed)
    if differences:
        raise RunFolderError(f"train.resume=auto: {out} holds no complete checkpoint, and its "
                             f"config.json is of another run: {'; '.join(differences)}. Choose "
                             f"a new train.output_dir, or set train.overwrite=true (and no "
                             f"train.resume) to replace that run")
    note = (f"train.resume=auto: no complete checkpoint in {out}; starting at step 0 (rows of "
            f"the earlier attempt stay in metrics.jsonl, under their own run_id)")
    return [note]


# --- The lock --------------------------------------------------------------------------------

def take_lock(out: Path, run_id: str, key: str = "train.output_dir",
              name: str = layout.LOCK) -> tuple[Path, list[str]]:
    """Create ``out/<name>`` for this process, or take over one whose process is gone; a
    live holder (or one on another host, which cannot be checked) refuses. ``key``: the config
    key naming ``out``, for the message (eval runs lock their output folder too)."""
    path = out / name
    if _create_lock(path, run_id):
        return path, []
    holder = _read_lock(path)
    if not _is_stale(holder):
        raise RunFolderError(_in_use(out, path, holder, key))
    _remove_stale_lock(path, holder)
    if not _create_lock(path, run_id):  # another run took it over first
        raise RunFolderError(_in_use(out, path, _read_lock(path), key))
    note = (f"took over {path}: run {holder.get('run_id')} (pid {holder.get('pid')} on this "
            f"host) is no longer running")
    return path, [note]


def write_lock(path: Path, run_id: str) -> None:
    """Rewrite our lock with the run id we continue (atomically: a reader never sees half)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(json.dumps(_me(run_id)))
    os.replace(fresh, path)


def release_lock(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    holder = _read_lock(path)
    if holder is not None and holder.get("pid") == os.getpid() \
            and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _me(run_id: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id}


def _create_lock(path: Path, run_id: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(_me(run_id)))
        f.flush()
        os.fsync(f.fileno())
    return True


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict | None) -> bool:
    """The holder ran on this host and its process is gone. Anything else may be alive."""
    if holder is None or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError, OverflowError):
        return False  # another user's process, or a pid we cannot read: assume alive
    return False


def _remove_stale_lock(path: Path, holder: dict) -> None:
    """Move the stale lock aside (atomic) and delete it; if what was moved is no longer the
    stale lock (another run took the folder over meanwhile), put it back."""
    moved = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return  # removed by another run first; creating the lock decides who has it
    if _read_lock(moved) != holder:
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)
    moved.unlink()


def _in_use(out: Path, path: Path, holder: dict | None, key: str) -> str:
    if holder is None:
        return (f"{key} {out} is locked by {path}, which does not say who holds it; "
                f"if no run is using the folder, delete {path}")
    return (f"{key} {out} is in use by run {holder.get('run_id')} (pid "
            f"{holder.get('pid')} on host {holder.get('host')}); wait for it to finish or choose "
            f"another {key} (if that run is gone, e.g. its machine crashed, delete "
            f"{path})")
