"""Export a training checkpoint as a plain Hugging Face model folder, and check it.

A run leaves its weights in one of three forms: a peft adapter over the base model (LoRA), a
full model folder (full fine-tuning without ZeRO-3), or DeepSpeed ZeRO-3 shards (full fine-tuning
under ZeRO-3, possibly with AutoEP expert parallelism). None of them is what a user deploys:
``export`` turns each into one folder of safetensors + config + generation config + processor
that ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load
with nothing else installed. LoRA (attention, MLP and fused-expert LoRA made with peft's
``target_parameters``) is merged into the base; ZeRO-3 shards are consolidated with DeepSpeed's
own ``zero_to_fp32``, AutoEP expert shards are put back into the HF fused experts. MoE experts
are written in the hub layout, so the export also loads under ZeRO-3 and expert-parallel
sharding (shared/STACK-NOTES.md, pitfall 3).

``verify_export`` reloads the export and compares it with the training-time model (base +
unmerged adapter, or the consolidated weights) on a fixed image + text sample: the largest
logit difference, and greedy generation token for token.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from train.debug_models import write_experts_in_hub_layout
from train.modeling import DTYPES

EXPECTED = ("a checkpoint-N folder (with model/ holding a peft adapter or a full model, or "
            "deepspeed/ holding ZeRO-3 shards), an output_dir/final folder, a peft adapter "
            "folder (adapter_config.json) or a Hugging Face model folder (config.json + "
            "*.safetensors)")


class ExportMismatch(AssertionError):
    """The reloaded export does not generate what the training-time model generates."""


@dataclass
class Source:
    """Where a checkpoint's weights are and what they sit on."""
    kind: str  # "lora" | "full" | "zero3"
    weights: Path  # the adapter folder, the model folder, or the DeepSpeed checkpoint folder
    base: str | None  # the base model (lora, zero3); None for a full model folder
    processor: str  # a folder the processor loads from
    dtype: str  # the training-time model's dtype (train config model.dtype, else float32)


# ---------------------------------------------------------------------------------------------
# Finding what a folder holds
# ---------------------------------------------------------------------------------------------

def _run_config(path: Path) -> dict | None:
    """The run config saved beside a checkpoint (checkpoint-N/train_config.json, or
    output_dir/config.json for output_dir/final), if any."""
    for candidate in (path / "train_config.json", path.parent / "train_config.json",
                      path.parent / "config.json"):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            if isinstance(data.get("model"), dict) and data["model"].get("path"):
                return data
    return None


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _has_processor(path: Path) -> bool:
    return any((path / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))


def _is_deepspeed_folder(path: Path) -> bool:
    return (path / "latest").is_file() or any(path.glob("*/*model_states.pt"))


def resolve_source(path: str | Path, base: str | None = None) -> Source:
    """Say what ``path`` holds. ``base`` overrides the base model named by the run config or
    the adapter (e.g. when the base was moved after training)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; expected {EXPECTED}")
    if not (path / "model").is_dir() and not (path / "deepspeed").is_dir() \
            and not (path / "adapter_config.json").is_file() and not _is_model_folder(path) \
            and not _is_deepspeed_folder(path):
        # An output_dir: take its final/ folder, else its latest checkpoint.
        from train.checkpoint import list_checkpoints

        found = [path / "final"] if (path / "final").is_dir() else list_checkpoints(path)[-1:]
        if not found:
            raise ValueError(f"{path}: not a training checkpoint; expected {EXPECTED}")
        print(f"[export] {path} is a run folder; exporting {found[-1]}", flush=True)
        return resolve_source(found[-1], base)

    run = _run_config(path)
    dtype = (run or {}).get("model", {}).get("dtype") or "float32"
    base = base or (run or {}).get("model", {}).get("path")
    adapter = next((p for p in (path, path / "model") if (p / "adapter_config.json").is_file()), None)
    if adapter is not None:
        base = base or json.loads((adapter / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter}: the adapter names no base model and no run config was "
                             f"found beside it; pass the base model (--base DIR)")
        _check_base(base, adapter)
        return Source("lora", adapter, base, _processor_folder(path, base), dtype)
    model_dir = next((p for p in (path / "model", path) if _is_model_folder(p)), None)
    if model_dir is not None:
        return Source("full", model_dir, None, _processor_folder(path, base or str(model_dir)),
                      dtype)
    ds_dir = path / "deepspeed" if (path / "deepspeed").is_dir() else path
    if _is_deepspeed_folder(ds_dir):
        if not base:
            raise ValueError(f"{path}: ZeRO-3 shards need the base model's architecture and no run "
                             f"config (train_config.json) was found beside them; pass --base DIR")
        _check_base(base, ds_dir)
        return Source("zero3", ds_dir, base, _processor_folder(path, base), dtype)
    raise ValueError(f"{path}: not a training checkpoint (model/ holds neither an "
                     f"adapter_config.json nor config.json + *.safetensors, and deepspeed/ holds no "
                     f"ZeRO shards); expected {EXPECTED}")


def _check_base(base: str, weights: Path) -> None:
    """A base given as a local path must still be there (a hub id has exactly one '/')."""
    looks_local = base.startswith(("/", ".", "~")) or base.count("/") != 1
    if looks_local and not Path(base).expanduser().is_dir():
        raise FileNotFoundError(f"base model {base} of {weights} not found (a relative path is "
                                f"relative to where training ran); pass --base DIR")


def _processor_folder(path: Path, base: str) -> str:
    for candidate in (path, path / "model"):
        if _has_processor(candidate):
            return str(candidate)
    return base


# ---------------------------------------------------------------------------------------------
# Verification: a fixed image + text sample, logits and greedy tokens
# ---------------------------------------------------------------------------------------------

@dataclass
class SampleOutputs:
    logits: torch.Tensor  # (1, seq, vocab), float32
    generated: list[int]  # greedy continuation token ids


def verification_inputs(processor) -> dict:
    """A fixed, non-square gradient image and a question, as the processor encodes them."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:96]
    image = Image.fromarray(np.stack([x * 2, y * 3, (x + y) % 256], -1).astype(np.uint8))
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


@torch.no_grad()
def sample_outputs(model, processor, max_new_tokens: int = 8) -> SampleOutputs:
    """Logits and greedy tokens of ``model`` on the verification sample (any wrapped model:
    peft, a DeepSpeed engine's module; every rank must call it under ZeRO-3)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in verification_inputs(processor).items()}
    logits = model(**inputs).logits.float().cpu()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    model.train(was_training)
    return SampleOutputs(logits, out[0, inputs["input_ids"].shape[1]:].tolist())


def verify_export(reference, export_dir: str | Path, processor=None) -> float:
    """Reload ``export_dir`` with plain transformers and compare it with ``reference`` (the
    training-time model, or its ``SampleOutputs``). Returns the largest absolute logit
    difference; raises ExportMismatch if greedy generation differs."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = processor or AutoProcessor.from_pretrained(str(export_dir))
    if not isinstance(reference, SampleOutputs):
        reference = sample_outputs(reference, processor)
    exported = AutoModelForImageTextToText.from_pretrained(str(export_dir))
    got = sample_outputs(exported, processor, max_new_tokens=len(reference.generated) or 8)
    diff = (got.logits - reference.logits).abs().max().item()
    if got.generated != reference.generated:
        raise ExportMismatch(f"{export_dir}: greedy generation differs from the training-time "
                             f"model: {got.generated} vs {reference.generated} (max abs logit "
                             f"difference {diff:.3g})")
    return diff


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def load_training_model(source: Source):
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
    model = consolidate_zero3(source.weights, AutoConfig.from_pretrained(source.base),
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


def consolidate_zero3(ds_dir: Path, config, generation_config=None):
    """The full model from DeepSpeed ZeRO-3 shards, in the architecture ``config`` names, float32
    (the optimizer's master weights).

    Plain ZeRO-3 goes through DeepSpeed's ``zero_to_fp32``. That tool refuses AutoEP checkpoints
    (experts are partitioned over expert-parallel ranks, not data-parallel ones), so those go
    through DeepSpeed's universal-checkpoint converter, which reassembles every expert, and
    AutoEP's grouped-expert tensors are then mapped back to the HF fused experts.
    """
    import transformers

    tag_dir = _deepspeed_tag_dir(ds_dir)
    rank0 = torch.load(_model_state_files(tag_dir)[0], map_location="cpu", weights_only=False)
    if rank0.get("ds_autoep_layers"):
        state = _autoep_state_dict(tag_dir)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=tag_dir.name)
    model_class = getattr(transformers, config.architectures[0])
    model, info = model_class.from_pretrained(None, config=config, state_dict=state,
                                              dtype=torch.float32, output_loading_info=True)
    if generation_config is not None:
        model.generation_config = generation_config
    if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{ds_dir}: the ZeRO-3 shards do not match {config.architectures[0]} "
                         f"(missing {sorted(info['missing_keys'])[:3]}, unexpected "
                         f"{sorted(info['unexpected_keys'])[:3]}, mismatched "
                         f"{sorted(info['mismatched_keys'])[:3]}); is --base the model that "
                         f"was trained?")
    return model


def _deepspeed_tag_dir(ds_dir: Path) -> Path:
    """The folder of the checkpoint tag ``latest`` names (the trainer saves tag "state")."""
    latest = ds_dir / "latest"
    tags = [ds_dir / latest.read_text().strip()] if latest.is_file() else \
        sorted({p.parent for p in ds_dir.glob("*/*model_states.pt")})
    if len(tags) != 1 or not list(tags[0].glob("*model_states.pt")):
        raise ValueError(f"{ds_dir}: expected one DeepSpeed checkpoint tag (a 'latest' file naming "
                         f"a folder of *_model_states.pt), found {[t.name for t in tags]}")
    return tags[0]


def _model_state_files(tag_dir: Path) -> list[Path]:
    """``zero_pp_rank_{r}_mp_rank_00_model_states.pt``, in rank order."""
    def rank(path: Path) -> int:
        return int(re.search(r"rank_(\d+)_", path.name).group(1))

    return sorted(tag_dir.glob("*model_states.pt"), key=rank)


def _autoep_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """HF-named full tensors from an AutoEP ZeRO-3 checkpoint.

    DeepSpeed's universal converter reassembles the trained parameters (experts from their
    expert-parallel ranks, the rest from ZeRO partitions); frozen parameters, which it leaves
    out, are joined from each rank's fragment as zero_to_fp32 does; AutoEP's names and expert
    layouts are then mapped back to HF's.
    """
    import argparse
    import tempfile

    from deepspeed.checkpoint import ds_to_universal

    ranks = [torch.load(f, map_location="cpu", weights_only=False)
             for f in _model_state_files(tag_dir)]
    rank0 = ranks[0]
    frozen = rank0.get("frozen_param_shapes") or {}
    frozen_experts = [n for n in frozen if any(n.startswith(layer["module_path"] + ".experts.")
                                               for layer in rank0["ds_autoep_layers"])]
    if frozen_experts:
        raise ValueError(f"{tag_dir}: experts frozen under AutoEP ({frozen_experts[0]} ...): "
                         f"DeepSpeed cannot consolidate frozen expert-parallel shards; train the "
                         f"experts (train.freeze_llm=false) or run without expert parallelism")
    shapes: dict[str, tuple] = {}
    for group in rank0["param_shapes"]:
        shapes.update({name: tuple(shape) for name, shape in group.items()})
    with tempfile.TemporaryDirectory(prefix="export-universal-") as tmp:
        ds_to_universal.main(argparse.Namespace(
            input_folder=str(tag_dir), output_folder=tmp, num_extract_workers=1,
            num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False))
        state = {}
        for param_dir in sorted(p.parent for p in (Path(tmp) / "zero").glob("*/fp32.pt")):
            saved = torch.load(param_dir / "fp32.pt", map_location="cpu", weights_only=False)
            if isinstance(saved, dict):  # an expert tensor, all experts: (E, ...)
                state[param_dir.name] = saved["param"]
            else:  # a flat ZeRO-3 parameter
                state[param_dir.name] = saved.view(shapes[param_dir.name])
    for name, shape in frozen.items():
        fragments = [r["frozen_param_fragments"][name] for r in ranks]
        numel = torch.Size(shape).numel()
        state[name] = torch.cat(fragments).narrow(0, 0, numel).view(tuple(shape)).float()
    state.update({k: v.float() for k, v in rank0["module"].items() if k in rank0["buffer_names"]})
    for name, shared_with in rank0.get("shared_params", {}).items():
        state[name] = state[shared_with]
    for layer in rank0["ds_autoep_layers"]:
        _autoep_layer_to_hf(state, layer["module_path"], rank0.get("ds_config", {}))
    return state


def _autoep_layer_to_hf(state: dict, prefix: str, ds_config: dict) -> None:
    """Rename one AutoEP MoE layer's tensors (in place) to the HF fused-experts names.

    AutoEP keeps the router as ``router.gate`` and the experts as TorchTitan-style grouped
    tensors w1 = gate (E, I, H), w3 = up (E, I, H), w2 = down (E, H, I) (deepspeed.moe.ep_repack);
    HF's Qwen3-VL-MoE stores ``gate`` and ``experts.gate_up_proj`` (E, 2I, H) = [gate; up],
    ``experts.down_proj`` (E, H, I). The HF names come from the run's expert_parallel config.
    """
    ep = ds_config.get("expert_parallel", {})
    router = ep.get("router_pattern") or "gate"
    experts = ep.get("expert_pattern") or "experts"
    w1, w2, w3 = ep.get("expert_w1") or "gate_up_proj", ep.get("expert_w2") or "down_proj", \
        ep.get("expert_w3")
    for suffix in ("weight", "bias"):
        name = f"{prefix}.router.gate.{suffix}"
        if name in state:
            state[f"{prefix}.{router}.{suffix}"] = state.pop(name)
    gate, up, down = (state.pop(f"{prefix}.experts.{w}") for w in ("w1", "w3", "w2"))
    if w3:  # separate gate and up parameters
        state[f"{prefix}.{experts}.{w1}"], state[f"{prefix}.{experts}.{w3}"] = gate, up
    else:
        state[f"{prefix}.{experts}.{w1}"] = torch.cat([gate, up], dim=1)
    state[f"{prefix}.{experts}.{w2}"] = down


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


def _prepare_out_dir(out_dir: Path, source: Source, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an --out that holds or is any input; empty it only when asked to."""
    inputs = [checkpoint, source.weights, Path(source.processor)] + \
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


if __name__ == "__main__":
    import sys

    from train.export_cli import main

    sys.exit(main())
