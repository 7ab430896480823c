"""The checkpoint layout: what a training run writes where, and what any folder a user points
at holds. The trainer writes through this module; the exporter and the eval harness read
through it, so the three can never disagree about a folder.

A training run folder (``train.output_dir``)::

    config.json           the run config (every section, as loaded)
    metrics.jsonl  bad_samples.jsonl  loss_curve.png
    run.lock              held while a run uses the folder: host, pid and run id
    checkpoint-N/         a complete checkpoint (assembled in .tmp-checkpoint-N, renamed into
                          place once every rank has written its part; retention renames it to
                          .deleting-checkpoint-N before deleting it)
        model/            the peft adapter, or the full model; absent under ZeRO-3 full
                          fine-tuning, whose weights exist only in deepspeed/
        deepspeed/        DeepSpeed's shards (weights, optimizer, schedule), or optimizer.pt
        trainer_state.pt  rng_rank{r}.pt  train_config.json (the run config again, for export)
        complete.json     written last: the size of every other file (a checkpoint missing
                          one of them is incomplete)
    final/                what eval loads: the adapter or the full model, with the processor

Other things a path may name: a Hugging Face model folder (``config.json`` + safetensors), a
peft adapter folder (``adapter_config.json``), a DeepSpeed checkpoint folder, or a hub id
(``org/name``; nothing local by that name).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RUN_CONFIG = "config.json"
TRAIN_CONFIG = "train_config.json"
FINAL = "final"
MODEL = "model"
DEEPSPEED = "deepspeed"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.pt"
COMPLETE = "complete.json"
LOCK = "run.lock"
# What a run writes into its folder besides checkpoints (train.overwrite deletes these).
RUN_FILES = (RUN_CONFIG, "metrics.jsonl", "bad_samples.jsonl", "loss_curve.png", FINAL,
             "tensorboard", "wandb")
# Any of these in a folder means a run has used it (bad_samples.jsonl alone does not: a run
# that failed on its data wrote nothing else, and may simply be started again).
PREVIOUS_RUN_MARKERS = (RUN_CONFIG, "metrics.jsonl", FINAL)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A folder the processor loads from (AutoProcessor needs the image processor's settings; a
# tokenizer alone is not a Qwen3-VL processor).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
EXPECTED = ("a checkpoint-N folder (model/ holding a peft adapter or a full model, or deepspeed/ "
            "holding ZeRO-3 shards), a training run folder (its final/, else its newest "
            "checkpoint), a peft adapter folder (adapter_config.json), a Hugging Face model "
            "folder (config.json + *.safetensors) or a hub id")


# --- Writing ---------------------------------------------------------------------------------

def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def partial_checkpoint_dir(output_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is assembled before it is renamed into place."""
    return Path(output_dir) / f".tmp-checkpoint-{step}"


def deleting_checkpoint_dir(checkpoint: Path) -> Path:
    """Where retention moves a checkpoint before deleting it, so that a kill half-way through
    the deletion never leaves a ``checkpoint-N`` that looks complete."""
    return Path(checkpoint).with_name(f".deleting-{Path(checkpoint).name}")


def rng_file(checkpoint: Path, rank: int) -> Path:
    return Path(checkpoint) / f"rng_rank{rank}.pt"


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Every ``checkpoint-N`` folder, complete or not, oldest first."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` is not a complete checkpoint, or None. Its ``complete.json`` lists
    every file with its size; a checkpoint written before that file existed is complete when
    it has its trainer_state.pt."""
    p = Path(checkpoint)
    if not (p / TRAINER_STATE).is_file():
        return f"no {TRAINER_STATE} (a save or a deletion was cut short)"
    if not (p / COMPLETE).is_file():
        return None
    try:
        files = json.loads((p / COMPLETE).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{COMPLETE} is unreadable"
    missing = [name for name, size in files.items()
               if not (p / name).is_file() or (p / name).stat().st_size != size]
    if missing:
        return f"{len(missing)} of its files are missing or cut short (e.g. {missing[0]})"
    return None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first."""
    return [p for p in checkpoint_folders(output_dir) if checkpoint_problem(p) is None]


def leftovers(output_dir: Path) -> list[Path]:
    """What interrupted saves and deletions left: partial ``.tmp-checkpoint-N`` and
    ``.deleting-checkpoint-N`` folders and incomplete ``checkpoint-N`` folders."""
    out = Path(output_dir)
    hidden = sorted(list(out.glob(".tmp-checkpoint-*")) + list(out.glob(".deleting-checkpoint-*")))
    return hidden + [p for p in checkpoint_folders(out) if checkpoint_problem(p) is not None]


def previous_run(output_dir: Path) -> list[str]:
    """Names in ``output_dir`` that show a training run has used it (empty: a new folder)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [name for name in PREVIOUS_RUN_MARKERS if (out / name).exists()]
    found += [p.name for p in checkpoint_folders(out)]
    return found + [p.name for p in sorted(out.glob(".tmp-checkpoint-*"))]


# --- What a folder holds ---------------------------------------------------------------------

def is_hub_id(path: str) -> bool:
    """``org/name`` (or a bare legacy name) with nothing local by that name."""
    return (not Path(path).expanduser().exists() and not path.startswith(("/", ".", "~"))
            and path.count("/") <= 1 and not path.endswith("/"))


def is_model_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and any(
        any(p.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json"))


def is_adapter_folder(p: Path) -> bool:
    return (p / "adapter_config.json").is_file()


def has_processor(p: Path) -> bool:
    return any((p / f).is_file() for f in PROCESSOR_FILES)


def is_deepspeed_folder(p: Path) -> bool:
    return (p / "latest").is_file() or any(p.glob("*/*model_states.pt"))


def is_run_folder(p: Path) -> bool:
    """A training output_dir: a final/ or complete checkpoints, and no weights of its own."""
    own = is_model_folder(p) or is_adapter_folder(p) or (p / MODEL).is_dir() or (p / DEEPSPEED).is_dir()
    return not own and ((p / FINAL).is_dir() or bool(list_checkpoints(p)))


def run_config(path: Path) -> dict | None:
    """The run config saved with a checkpoint (``checkpoint-N/train_config.json``) or beside
    it (the run folder's ``config.json`` for ``final/``), if any."""
    for candidate in (path / TRAIN_CONFIG, path.parent / TRAIN_CONFIG, path.parent / RUN_CONFIG):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            if isinstance(data.get("model"), dict) and data["model"].get("path"):
                return data
    return None


@dataclass(frozen=True)
class Located:
    """What a path holds, as loaders need it."""

    kind: Literal["base", "full", "lora", "zero3"]
    weights: str  # the model folder or hub id; the adapter folder; the DeepSpeed folder
    base: str | None  # the model a LoRA adapter or ZeRO-3 shards sit on; None otherwise
    processor: str  # a folder or hub id the processor loads from
    dtype: str  # the training-time dtype (the run config's model.dtype), else float32
    path: str  # the folder actually used (a run folder resolves to its final/ or checkpoint)


def locate(path: str, adapter: str | None = None, base: str | None = None,
           announce=None) -> Located:
    """Say what ``path`` holds. ``adapter``: a separate peft adapter to put on ``path``;
    ``base``: the base model, overriding the one the run config or adapter names (e.g. when it
    was moved after training). A run folder resolves to its ``final/``, else its newest
    checkpoint (``announce(message)`` is told which). Errors say which file was expected."""
    if adapter is not None:
        model = locate(path, base=base)
        if model.kind in ("lora", "zero3"):
            raise ValueError(f"{path}: a separate adapter goes on a full model, but this is a "
                             f"{model.kind} checkpoint")
        found = locate(adapter, base=model.weights)
        if found.kind != "lora":
            raise ValueError(f"adapter {adapter}: no adapter_config.json in {found.weights}; point "
                             f"adapter at a peft adapter folder (e.g. a LoRA run's final/)")
        processor = found.processor if found.processor != found.base else model.processor
        return Located("lora", found.weights, model.weights, processor, found.dtype, found.path)
    if is_hub_id(path):
        return Located("base", path, None, path, "float32", path)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {path}: no such folder; expected {EXPECTED}")
    if not p.is_dir():
        raise ValueError(f"checkpoint {path}: a file; expected {EXPECTED}")
    if is_run_folder(p):
        chosen = p / FINAL if (p / FINAL).is_dir() else list_checkpoints(p)[-1]
        if announce is not None:
            announce(f"{path} is a run folder; using {chosen}")
        return locate(str(chosen), base=base, announce=announce)

    run = run_config(p)
    dtype = (run or {}).get("model", {}).get("dtype") or "float32"
    trained_from = (run or {}).get("model", {}).get("path")
    adapter_dir = next((q for q in (p, p / MODEL) if is_adapter_folder(q)), None)
    if adapter_dir is not None:
        base = base or trained_from or json.loads(
            (adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_dir}: the adapter names no base model and no run config "
                             f"was found beside it; give the base model (--base / path: with "
                             f"this folder as adapter:)")
        _check_exists(base, adapter_dir)
        return Located("lora", str(adapter_dir), base, _processor(p, adapter_dir, base), dtype, str(p))
    model_dir = next((q for q in (p / MODEL, p) if is_model_folder(q)), None)
    if model_dir is not None:
        kind = "full" if run is not None else "base"
        return Located(kind, str(model_dir), None, _processor(p, model_dir, base or trained_from),
                       dtype, str(p))
    ds_dir = p / DEEPSPEED if (p / DEEPSPEED).is_dir() else p
    if is_deepspeed_folder(ds_dir):
        base = base or trained_from
        if not base:
            raise ValueError(f"{path}: ZeRO-3 shards need the base model's architecture and no run "
                             f"config ({TRAIN_CONFIG}) was found beside them; pass --base DIR")
        _check_exists(base, ds_dir)
        return Located("zero3", str(ds_dir), base, _processor(p, ds_dir, base), dtype, str(p))
    holder = "model/ holds" if (p / MODEL).is_dir() else "it holds"
    raise ValueError(f"{path}: not a training checkpoint ({holder} no adapter_config.json, no "
                     f"config.json + *.safetensors, no ZeRO shards); expected {EXPECTED}")


def _check_exists(base: str, weights: Path) -> None:
    """A base given as a local path must still be there."""
    if not is_hub_id(base) and not Path(base).expanduser().is_dir():
        raise FileNotFoundError(f"base model {base} of {weights} not found (a relative path is "
                                f"relative to where training ran); pass --base DIR (export) or "
                                f"give the base as path: and this folder as adapter: (eval)")


def _processor(folder: Path, weights: Path, fallback: str | None) -> str:
    """The checkpoint's own processor when it saved one, else the base model's."""
    for candidate in (weights, folder):
        if has_processor(candidate):
            return str(candidate)
    return fallback or str(weights)
