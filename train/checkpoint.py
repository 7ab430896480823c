"""Resumable checkpoints, written atomically, with retention (keep last N, optionally the best).

What a checkpoint holds and where is ``train.layout``'s: ``model/`` (the adapter or full model,
written by the engine, which gathers ZeRO-3 shards), the optimizer and schedule
(``optimizer.pt`` or DeepSpeed's ``deepspeed/``), ``trainer_state.pt`` (step, loss since the
previous save, run id), ``rng_rank{r}.pt`` for every rank (python, numpy, torch, cuda, as plain
values), ``train_config.json`` and, last, ``complete.json``. A checkpoint is assembled in a
hidden ``.tmp-`` folder, its files are fsynced, and it is renamed into place only once every
rank has written its part, so a kill at any moment leaves the previous checkpoint usable. A
save that fails (a full disk) removes its partial folder and says so in one message. Retention
renames a checkpoint to ``.deleting-`` before deleting it; leftovers of interrupted saves and
deletions are cleaned at start and at each save.

Reading: every file goes through ``train.safeload`` (no pickle can run code), and a checkpoint
is resumed only by a config it fits (``config_differences``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from train import layout
from train.distributed import DistInfo, all_reduce_sum, barrier
from train.engine import unwrap
from train.errors import CheckpointError
from train.safeload import load_file

# --- RNG state -------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every generator's state as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "cached_gaussian": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        n = numpy_state
        numpy_state = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                       n["cached_gaussian"])
    np.random.set_state(numpy_state)  # a tuple in files written before the plain form
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- Saving ----------------------------------------------------------------------------------

def write_state(obj, path: Path) -> None:
    """``torch.save``: the one place the checkpoint code writes a .pt file itself (a test makes
    it fail as a full disk would)."""
    torch.save(obj, path)


def save_checkpoint(output_dir: Path, step: int, engine, dist: DistInfo, keep_last: int,
                    keep_best: bool = False, loss: float | None = None,
                    run_config: dict | None = None) -> Path:
    """Write ``checkpoint-{step}`` (all ranks call this), then apply retention. A rank that
    fails to write tells the others (no rank waits forever), the partial folder is removed,
    and every rank raises CheckpointError naming the folder and the free space."""
    final = layout.checkpoint_dir(output_dir, step)
    tmp = layout.partial_checkpoint_dir(output_dir, step)
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    error = _attempt(_write_own_part, tmp, engine, dist)
    if not _failed_anywhere(error, dist) and dist.is_main:
        error = _attempt(_seal, tmp, step, loss, run_config)
    if _failed_anywhere(error, dist):
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failure(Path(output_dir), final, tmp, error) from error
    if dist.is_main:
        _publish(tmp, final)
        for old in stale_checkpoints(output_dir, keep_last, keep_best):
            remove_checkpoint(old)
        clean_leftovers(output_dir)
    barrier()
    return final


def _attempt(fn, *args) -> Exception | None:
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - reported on every rank by save_checkpoint
        return e
    return None


def _failed_anywhere(error: Exception | None, dist: DistInfo) -> bool:
    return all_reduce_sum([float(error is not None)], dist.device)[0] > 0


def _write_own_part(tmp: Path, engine, dist: DistInfo) -> None:
    """This rank's files. The engine's writes come first: under DeepSpeed they are collective,
    and a rank that failed on its own file before them would leave the others waiting."""
    engine.save_weights(tmp / layout.MODEL)
    engine.save(tmp)
    write_state(rng_state(), layout.rng_file(tmp, dist.rank))


def _seal(tmp: Path, step: int, loss: float | None, run_config: dict | None) -> None:
    """Rank 0, once every rank has written: the trainer state and config, every file flushed
    to disk, then ``complete.json`` listing them (what makes the folder a checkpoint)."""
    run_id = (run_config or {}).get("run_id")
    write_state({"step": step, "loss": loss, "run_id": run_id}, tmp / layout.TRAINER_STATE)
    if run_config is not None:
        (tmp / layout.TRAIN_CONFIG).write_text(json.dumps(run_config, indent=2))
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    _fsync_tree(tmp)
    (tmp / layout.COMPLETE).write_text(json.dumps({"step": step, "run_id": run_id, "files": files}))
    _fsync(tmp / layout.COMPLETE)
    _fsync(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folders (deepest first), so that the rename
    publishes data that is on disk, not in the page cache of a machine about to crash."""
    paths = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for p in paths:
        if p.is_file():
            _fsync(p)
    for p in [p for p in paths if p.is_dir()] + [folder]:
        _fsync(p)


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():  # the same step saved again (a resumed run re-saving its last step)
        remove_checkpoint(final)
    tmp.rename(final)
    _fsync(final.parent)


def _write_failure(output_dir: Path, final: Path, tmp: Path, error: Exception | None) -> CheckpointError:
    free = shutil.disk_usage(output_dir).free
    kept = layout.list_checkpoints(output_dir)
    what = (f"{type(error).__name__}: {error}" if error is not None
            else "another rank failed to write its part; see its message")
    return CheckpointError(
        f"could not write {final.name} in {output_dir} ({what}); {_size(free)} free on that disk. "
        f"The partial {tmp.name} was removed; the last complete checkpoint "
        f"({kept[-1].name if kept else 'none yet'}) is kept. Free some space (or set "
        f"train.output_dir to a larger disk) and continue with train.resume=auto")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# --- Retention and leftovers -----------------------------------------------------------------

def stale_checkpoints(output_dir: Path, keep_last: int, keep_best: bool) -> list[Path]:
    """Checkpoints retention removes: all but the last ``keep_last`` and, with ``keep_best``,
    the one with the lowest train loss."""
    found = layout.list_checkpoints(output_dir)
    keep = set(found[-keep_last:])
    if keep_best:
        scored = [(read_trainer_state(p).get("loss"), p) for p in found]
        scored = [(loss, p) for loss, p in scored if loss is not None]
        if scored:
            keep.add(min(scored, key=lambda x: x[0])[1])
    return [p for p in found if p not in keep]


def remove_checkpoint(checkpoint: Path) -> None:
    """Rename out of sight first (atomic), then delete: a kill during the deletion leaves a
    ``.deleting-`` folder, never a ``checkpoint-N`` that resume would take for complete."""
    doomed = layout.deleting_checkpoint_dir(checkpoint)
    shutil.rmtree(doomed, ignore_errors=True)
    Path(checkpoint).rename(doomed)
    shutil.rmtree(doomed)


def clean_leftovers(output_dir: Path) -> list[str]:
    """Delete what interrupted saves and deletions left (``layout.leftovers``); returns one
    line per folder, saying why. Call only while holding the folder's lock."""
    removed = []
    for p in layout.leftovers(output_dir):
        problem = layout.checkpoint_problem(p) if p.name.startswith("checkpoint-") else None
        shutil.rmtree(p, ignore_errors=True)
        removed.append(f"{p.name} ({problem})" if problem else p.name)
    return removed


# --- Resuming --------------------------------------------------------------------------------

def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        found = layout.list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    problem = layout.checkpoint_problem(path) if path.is_dir() else "no such folder"
    if problem:
        raise CheckpointError(f"train.resume={resume}: not a complete checkpoint ({problem}); "
                              f"use 'auto' or a complete checkpoint-N folder")
    return path


def read_trainer_state(checkpoint: Path) -> dict:
    return load_file(Path(checkpoint) / layout.TRAINER_STATE)


def saved_config(checkpoint: Path) -> dict:
    """The run config a checkpoint was trained with (its train_config.json)."""
    path = Path(checkpoint) / layout.TRAIN_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: no {layout.TRAIN_CONFIG}, so nothing tells which "
                              f"model, adapter and data it was trained with; resume from a "
                              f"checkpoint this trainer wrote")
    return json.loads(path.read_text())


def config_differences(saved: dict, now: dict, allowed: tuple[str, ...] = ()) -> list[str]:
    """What differs between the run config a checkpoint was trained with and this run's, among
    what its weights and data order depend on: the base model, the LoRA shape and the data
    sources. Learning rate, steps and logging may change on resume. A section the saved config
    lacks is not compared, nor one ``allowed`` names (``model.path``, ``data``: the config's
    ``train.resume_allow_changes``)."""
    differences = []
    for section, key, of in (("model", "model.path", _model_path), ("lora", "lora", _lora_shape),
                             ("data", "data sources", _sources)):
        if section not in saved or key.split()[0] in allowed:
            continue
        was, is_now = of(saved), of(now)
        if section == "lora":
            keys = ["enabled"] if was["enabled"] != is_now["enabled"] else sorted(was)
            differences += [f"lora.{k}: {was[k]!r} in the checkpoint, {is_now[k]!r} now"
                            for k in keys if was[k] != is_now[k]]
        elif was != is_now:
            differences.append(f"{key}: {was!r} in the checkpoint, {is_now!r} now")
    return differences


def _where(path: str | None) -> str | None:
    """A local path, absolute; a hub id as written."""
    if not path or layout.is_hub_id(path):
        return path
    return str(Path(path).expanduser().resolve())


def _model_path(config: dict) -> str | None:
    return _where(config.get("model", {}).get("path"))


def _lora_shape(config: dict) -> dict:
    lora = config.get("lora", {})
    if not lora.get("enabled", True):
        return {"enabled": False}
    shape = {"enabled": True}
    for key in ("r", "alpha", "use_dora", "use_rslora"):
        shape[key] = lora.get(key)
    for key in ("targets", "modules_to_save"):
        shape[key] = sorted(lora.get(key) or [])
    return shape


def _sources(config: dict) -> list[str]:
    data = config.get("data", {})
    sources = data.get("sources") or [{"path": data.get("train"), "format": data.get("format"),
                                       "weight": 1.0}]
    return [f"{_where(s.get('path'))} ({s.get('format') or 'llava_json'}, weight "
            f"{float(s.get('weight', 1.0)):g})" for s in sources]


def _load_weights(module, model_dir: Path) -> None:
    from safetensors.torch import load_file as load_safetensors

    if hasattr(module, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(module, load_safetensors(str(model_dir / "adapter_model.safetensors")))
        return
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_safetensors(str(shard)))
    # save_pretrained leaves out an lm_head tied to the embeddings; anything else missing
    # or unexpected means the checkpoint belongs to another model.
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"{model_dir}: checkpoint does not match the model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_checkpoint(path: Path, engine, dist: DistInfo) -> dict:
    """Restore weights, optimizer, schedule and this rank's RNG; returns the trainer state.
    The caller has checked the folder's pickles (``train.safeload.check_pickles``): DeepSpeed
    reads its shards itself."""
    if not engine.restores_weights:
        _load_weights(unwrap(engine.module), path / layout.MODEL)
    engine.load(path)
    rng_file = layout.rng_file(path, dist.rank)
    if rng_file.is_file():
        set_rng_state(load_file(rng_file))
    return read_trainer_state(path)
