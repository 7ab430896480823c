"""What an eval checkpoint is: base model, full fine-tune or base + LoRA adapter, dense or MoE.
Users point ``checkpoints[].path`` at whatever they have; ``train.layout.locate`` reads what it
holds, exactly as the exporter does:

- a hub id or a model folder (``config.json``): a full model. It counts as a fine-tune
  ("full") when it came out of our trainer (a run config with it), else as a base model;
- a peft adapter folder (``adapter_config.json``): LoRA on the base its run config or
  ``adapter_config.json`` names, or on ``path`` when the adapter is given separately as
  ``adapter:``;
- a training run folder (``outputs/train``): its ``final/``, else its newest checkpoint;
- a mid-run checkpoint (``checkpoint-N/``): its ``model/``, with the base model and processor
  taken from the run's ``train_config.json``. ZeRO-3 full fine-tunes keep those weights only
  in DeepSpeed shards; ``python -m train.export`` consolidates them first.

Dense vs MoE comes from ``config.json``'s ``model_type``, so the right class loads either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from train.layout import locate


@dataclass(frozen=True)
class ResolvedCheckpoint:
    model: str  # what from_pretrained loads the model from: a folder or hub id
    adapter: str | None  # a peft adapter folder applied on top, or None
    processor: str  # where the tokenizer / processor come from
    kind: Literal["base", "full", "lora"]
    arch: Literal["dense", "moe"]


def resolve_checkpoint(path: str, adapter: str | None = None, announce=None) -> ResolvedCheckpoint:
    """Work out what ``path`` (and an optional separate ``adapter``) hold; errors say which file
    was expected where. ``announce(message)`` hears which checkpoint a run folder resolved to."""
    from transformers import AutoConfig

    found = locate(path, adapter, announce=announce)
    if found.kind == "zero3":
        raise ValueError(f"checkpoint {path}: its weights exist only as ZeRO-3 shards in "
                         f"{found.weights}; run `python -m train.export {found.path} --out OUT` "
                         f"and evaluate OUT")
    model, lora = (found.base, found.weights) if found.kind == "lora" else (found.weights, None)
    model_type = AutoConfig.from_pretrained(model).model_type
    if model_type not in ("qwen3_vl", "qwen3_vl_moe"):
        raise ValueError(f"{model}: model_type {model_type!r} is not Qwen3-VL (qwen3_vl or qwen3_vl_moe)")
    return ResolvedCheckpoint(model=model, adapter=lora, processor=found.processor, kind=found.kind,
                              arch="moe" if model_type == "qwen3_vl_moe" else "dense")


def load_checkpoint(resolved: ResolvedCheckpoint, dtype: str = "float32",
                    attn_implementation: str = "sdpa"):
    """(model, processor) for a resolved checkpoint, with the class its config names."""
    from train.modeling import load_model, load_processor

    model = load_model(resolved.model, dtype, attn_implementation, adapter=resolved.adapter)
    return model, load_processor(resolved.processor)
