"""Resumable checkpoints, written atomically, with retention.

Layout: ``output_dir/checkpoint-{step}/`` holds ``model/`` (the peft adapter, or the full model),
``trainer_state.pt`` (optimizer, scheduler, step) and ``rng_rank{r}.pt`` for every rank. A
checkpoint is assembled in a hidden ``.tmp-`` folder and renamed into place, so a kill during a
save leaves the previous checkpoint complete and usable.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from train.distributed import DistInfo, barrier

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


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


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / "trainer_state.pt").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, dist: DistInfo,
                    keep_last: int, extra: dict | None = None) -> Path:
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng_rank{dist.rank}.pt")
    if dist.is_main:
        unwrap(model).save_pretrained(str(tmp / "model"))
        torch.save({"step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), **(extra or {})}, tmp / "trainer_state.pt")
    barrier()
    if dist.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old)
    barrier()
    return final


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint "
                                f"(no trainer_state.pt); use 'auto' or a checkpoint-N folder")
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, dist: DistInfo) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns the trainer state."""
    from safetensors.torch import load_file

    inner = unwrap(model)
    model_dir = path / "model"
    if hasattr(inner, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(inner, load_file(str(model_dir / "adapter_model.safetensors")))
    else:
        state = {}
        for shard in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(str(shard)))
        # save_pretrained leaves out an lm_head tied to the embeddings; anything else missing
        # or unexpected means the checkpoint belongs to another model.
        missing, unexpected = inner.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise ValueError(f"{model_dir}: checkpoint does not match the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    rng_file = path / f"rng_rank{dist.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state
