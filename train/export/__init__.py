"""Export a training checkpoint as a plain Hugging Face model folder, and check it.

A run leaves its weights in one of three forms: a peft adapter over the base model (LoRA), a
full model folder (full fine-tuning without ZeRO-3), or DeepSpeed ZeRO-3 shards (full fine-tuning
under ZeRO-3, possibly with AutoEP expert parallelism). None of them is what a user deploys:
``export`` turns each into one folder of safetensors + config + generation config + processor
that ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load
with nothing else installed. LoRA (attention, MLP and fused-expert LoRA made with peft's
``target_parameters``) is merged into the base; ZeRO-3 shards are consolidated
(``zero3.py``: DeepSpeed's own ``zero_to_fp32``, AutoEP expert shards put back into the HF
fused experts). MoE experts are written in the hub layout, so the export also loads under ZeRO-3
and expert-parallel sharding (shared/STACK-NOTES.md, pitfall 3).

What a folder holds is read by ``train.layout.locate``, as the eval harness reads it.
``verify.py`` reloads the export and compares it with the training-time model. The command
line is ``python -m train.export`` (``__main__.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from train.export.verify import (ExportMismatch, SampleOutputs, sample_outputs,  # noqa: F401
                                 verification_inputs, verify_export)
from train.export.zero3 import consolidate_zero3
from train.layout import Located, locate
from train.modeling import DTYPES
from train.qwen3_vl.state_dict import write_experts_in_hub_layout


def resolve_source(path: str | Path, base: str | None = None) -> Located:
    """What ``path`` holds, for export: a plain model folder that did not come from our
    trainer exports as it is ("full")."""
    found = locate(str(path), base=base,
                   announce=lambda message: print(f"[export] {message}", flush=True))
    return found if found.kind != "base" else Located("full", found.weights, None, found.processor,
                                                      found.dtype, found.path)


def load_training_model(source: Located):
    """The training-time model rebuilt from the checkpoint: base + unmerged adapter, the full
    model, or the consolidated ZeRO-3 weights in the base model's architecture."""
    from transformers import AutoConfig

    dtype = DTYPES[source.dtype]
    if source.kind == "lora":
        from peft import PeftModel

        model = _load_complete(source.base, dtype)
        return PeftModel.from_pretrained(model, str(source.weights)).eval()
    if source.kind == "full":
        return _load_complete(str(source.weights), dtype).eval()
    model = consolidate_zero3(Path(source.weights), AutoConfig.from_pretrained(source.base),
                              _generation_config(source.base))
    return model.to(dtype).eval()  # as the engine held them (bf16 runs: rounded fp32 masters)


def _load_complete(path: str, dtype):
    """from_pretrained that refuses a folder whose weights do not fill the architecture (plain
    from_pretrained would initialise the missing ones at random and export them)."""
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype,
                                                              output_loading_info=True)
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(info["mismatched_keys"])
    if missing or unexpected or mismatched:
        hint = ("it holds DeepSpeed AutoEP expert names (one rank's experts); export the "
                "checkpoint-N folder, whose deepspeed/ shards hold every expert"
                if any(".experts.w1" in k or ".router.gate." in k for k in unexpected) else
                "it was not saved from this architecture")
        raise ValueError(f"{path}: its weights do not match {type(model).__name__}: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}, mismatched "
                         f"{mismatched[:3]}; {hint}")
    return model


def _generation_config(path: str):
    """The base's generation_config.json (eos ids, defaults), if it has one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def export(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None,
           base: str | None = None, verify: bool = True, overwrite: bool = False) -> float | None:
    """Write ``checkpoint`` (see ``resolve_source``) to ``out_dir`` as a plain HF folder.

    ``dtype``: the exported weights' dtype (default: the training-time model's). Returns the
    max abs logit difference between the reloaded export and the training-time model when
    ``verify`` (raises ExportMismatch if greedy generation differs), else None.
    """
    from transformers import AutoProcessor

    source = resolve_source(checkpoint, base)
    out_dir = Path(out_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    _prepare_out_dir(out_dir, source, Path(checkpoint), overwrite)
    print(f"[export] {source.kind}: {source.weights}" + (f" on {source.base}" if source.base else ""),
          flush=True)

    processor = AutoProcessor.from_pretrained(source.processor)
    model = load_training_model(source)
    reference = sample_outputs(model, processor) if verify else None
    if source.kind == "lora":
        model = model.merge_and_unload()
    save_plain(model, out_dir, processor, dtype or source.dtype)
    del model
    return verify_export(reference, out_dir, processor) if verify else None


def _prepare_out_dir(out_dir: Path, source: Located, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an --out that holds or is any input; empty it only when asked to."""
    inputs = [checkpoint, Path(source.weights), Path(source.processor)] + \
        ([Path(source.base)] if source.base and Path(source.base).is_dir() else [])
    target = out_dir.resolve()
    for p in inputs:
        if target == p.resolve() or target in p.resolve().parents:
            raise ValueError(f"--out {out_dir} holds the input {p}; choose a new folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder or "
                                  f"pass overwrite=True (--overwrite)")
        shutil.rmtree(out_dir)


def save_plain(model, out_dir: Path, processor, dtype: str) -> None:
    """save_pretrained in ``dtype`` with the processor; MoE experts in the hub layout."""
    model = model.to(DTYPES[dtype])
    model.config.dtype = DTYPES[dtype]
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    if model.config.model_type == "qwen3_vl_moe":
        write_experts_in_hub_layout(out_dir)
