"""Resumable checkpoints, written atomically, with retention (keep last N, optionally the best).

What a checkpoint holds and where is ``train.layout``'s: ``model/`` (the adapter or full model,
written by the engine, which gathers ZeRO-3 shards), the optimizer and schedule
(``optimizer.pt`` or DeepSpeed's ``deepspeed/``), ``trainer_state.pt`` (step, loss since the
previous save), ``rng_rank{r}.pt`` for every rank (python, numpy, torch, cuda) and
``train_config.json``. A checkpoint is assembled in a hidden ``.tmp-`` folder and renamed into
place only once every rank has written its part, so a kill at any moment leaves the previous
checkpoint usable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from train import layout
from train.distributed import DistInfo, barrier
from train.engine import unwrap


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, engine, dist: DistInfo, keep_last: int,
                    keep_best: bool = False, loss: float | None = None,
                    run_config: dict | None = None) -> Path:
    final = layout.checkpoint_dir(output_dir, step)
    tmp = layout.partial_checkpoint_dir(output_dir, step)
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), layout.rng_file(tmp, dist.rank))
    engine.save_weights(tmp / layout.MODEL)
    engine.save(tmp)
    if dist.is_main:
        torch.save({"step": step, "loss": loss}, tmp / layout.TRAINER_STATE)
        if run_config is not None:
            (tmp / layout.TRAIN_CONFIG).write_text(json.dumps(run_config, indent=2))
    barrier()
    if dist.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in stale_checkpoints(output_dir, keep_last, keep_best):
            shutil.rmtree(old)
    barrier()
    return final


def stale_checkpoints(output_dir: Path, keep_last: int, keep_best: bool) -> list[Path]:
    """Checkpoints retention removes: all but the last ``keep_last`` and, with ``keep_best``,
    the one with the lowest train loss."""
    found = layout.list_checkpoints(output_dir)
    keep = set(found[-keep_last:])
    if keep_best:
        scored = [(torch.load(p / layout.TRAINER_STATE, weights_only=False).get("loss"), p)
                  for p in found]
        scored = [(loss, p) for loss, p in scored if loss is not None]
        if scored:
            keep.add(min(scored, key=lambda x: x[0])[1])
    return [p for p in found if p not in keep]


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        found = layout.list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / layout.TRAINER_STATE).is_file():
        raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint "
                                f"(no trainer_state.pt); use 'auto' or a checkpoint-N folder")
    return path


def _load_weights(module, model_dir: Path) -> None:
    from safetensors.torch import load_file

    if hasattr(module, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(module, load_file(str(model_dir / "adapter_model.safetensors")))
        return
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    # save_pretrained leaves out an lm_head tied to the embeddings; anything else missing
    # or unexpected means the checkpoint belongs to another model.
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"{model_dir}: checkpoint does not match the model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_checkpoint(path: Path, engine, dist: DistInfo) -> dict:
    """Restore weights, optimizer, schedule and this rank's RNG; returns the trainer state."""
    if not engine.restores_weights:
        _load_weights(unwrap(engine.module), path / layout.MODEL)
    engine.load(path)
    rng_file = layout.rng_file(path, dist.rank)
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return torch.load(path / layout.TRAINER_STATE, weights_only=False)
