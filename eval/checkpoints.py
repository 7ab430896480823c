"""What an eval checkpoint is, read from its files: base model, full fine-tune or base + LoRA
adapter, dense or MoE. Users point ``checkpoints[].path`` at whatever they have:

- a hub id or a model folder (``config.json``): a full model. It counts as a fine-tune
  ("full") when it came out of our trainer (a ``train_config.json`` in it or in its run
  folder), else as a base model;
- a peft adapter folder (``adapter_config.json``): LoRA on the base that the adapter names
  (``base_model_name_or_path``), or on ``path`` when the adapter is given separately as
  ``adapter:``;
- a training run folder (``outputs/train``): its ``final/``;
- a mid-run checkpoint (``checkpoint-N/``): its ``model/``, with the base model and processor
  taken from the run's ``train_config.json``. ZeRO-3 full fine-tunes keep those weights only
  in DeepSpeed shards; ``python -m train.export`` consolidates them first.

Dense vs MoE comes from ``config.json``'s ``model_type``, so the right class loads either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    model: str  # what from_pretrained loads the model from: a folder or hub id
    adapter: str | None  # a peft adapter folder applied on top, or None
    processor: str  # where the tokenizer / processor come from
    kind: Literal["base", "full", "lora"]
    arch: Literal["dense", "moe"]


def resolve_checkpoint(path: str, adapter: str | None = None) -> ResolvedCheckpoint:
    """Work out what ``path`` (and an optional separate ``adapter``) hold; errors say which file
    was expected where."""
    model, trained_from = _weights_folder(path)
    if adapter is not None:
        adapter_dir, _ = _weights_folder(adapter)
        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise ValueError(f"adapter {adapter}: no adapter_config.json in {adapter_dir}; "
                             f"point adapter at a peft adapter folder (e.g. a LoRA run's final/)")
        return _resolved(model, adapter_dir, kind="lora", base_for_processor=model)
    local = Path(model)
    if (local / "adapter_config.json").is_file():
        base = trained_from or json.loads((local / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        if not base:
            raise ValueError(f"{local}/adapter_config.json names no base_model_name_or_path; give "
                             f"the base model as path and this folder as adapter")
        return _resolved(base, model, kind="lora", base_for_processor=base)
    kind = "full" if trained_from or _is_training_output(local) else "base"
    return _resolved(model, None, kind=kind, base_for_processor=trained_from or model)


def load_checkpoint(resolved: ResolvedCheckpoint, dtype: str = "float32",
                    attn_implementation: str = "sdpa"):
    """(model, processor) for a resolved checkpoint, with the class its config names."""
    from train.modeling import load_model, load_processor

    model = load_model(resolved.model, dtype, attn_implementation, adapter=resolved.adapter)
    return model, load_processor(resolved.processor)


def _weights_folder(path: str) -> tuple[str, str | None]:
    """(folder holding the weights, base model it was trained from if the run says so)."""
    p = Path(path)
    if not p.is_dir():
        if p.exists():
            raise ValueError(f"checkpoint {path}: a file; point at a model folder or a hub id")
        if path.startswith(("/", ".", "~")) or path.count("/") > 1:
            raise ValueError(f"checkpoint {path}: no such folder")
        return path, None  # a hub id
    if (p / "train_config.json").is_file() and (p / "model").is_dir() or _is_step_folder(p):
        weights = p / "model"
        if not (weights / "config.json").is_file() and not (weights / "adapter_config.json").is_file():
            raise ValueError(f"checkpoint {path}: {weights} holds no weights (a ZeRO-3 full fine-tune "
                             f"keeps them in {p / 'deepspeed'}); run `python -m train.export {p} OUT` "
                             f"and evaluate OUT")
        run = json.loads((p / "train_config.json").read_text())
        return str(weights), run.get("model", {}).get("path")
    if not _has_weights(p) and _has_weights(p / "final"):
        return str(p / "final"), None  # a training run folder
    if not _has_weights(p):
        raise ValueError(f"checkpoint {path}: neither config.json (a model) nor adapter_config.json "
                         f"(a peft adapter) in it, and no final/ of a training run")
    return str(p), None


def _is_step_folder(p: Path) -> bool:
    return p.name.startswith("checkpoint-") and (p / "train_config.json").is_file()


def _has_weights(p: Path) -> bool:
    return (p / "config.json").is_file() or (p / "adapter_config.json").is_file()


def _is_training_output(p: Path) -> bool:
    """A final/ of our trainer: its run folder holds checkpoints with train_config.json."""
    return (p / "train_config.json").is_file() or any(p.parent.glob("checkpoint-*/train_config.json"))


def _resolved(model: str, adapter: str | None, kind: str, base_for_processor: str) -> ResolvedCheckpoint:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(model).model_type
    if model_type not in ("qwen3_vl", "qwen3_vl_moe"):
        raise ValueError(f"{model}: model_type {model_type!r} is not Qwen3-VL (qwen3_vl or qwen3_vl_moe)")
    # A fine-tune's own folder carries the processor it was trained with, when it saved one.
    own = adapter or model
    processor = own if any((Path(own) / f).is_file() for f in PROCESSOR_FILES) else base_for_processor
    return ResolvedCheckpoint(model=model, adapter=adapter, processor=processor, kind=kind,
                              arch="moe" if model_type == "qwen3_vl_moe" else "dense")
