"""Full weights from DeepSpeed ZeRO-3 shards (optionally AutoEP expert shards), in the
architecture of the base model's config."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from train.qwen3_vl.state_dict import autoep_layer_to_hf
from train.safeload import check_pickles, load_file


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
    check_pickles(ds_dir)  # DeepSpeed's readers below unpickle with weights_only=False
    rank0 = load_file(_model_state_files(tag_dir)[0], map_location="cpu")
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

    ranks = [load_file(f, map_location="cpu") for f in _model_state_files(tag_dir)]
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
            saved = load_file(param_dir / "fp32.pt", map_location="cpu")
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
        autoep_layer_to_hf(state, layer["module_path"], rank0.get("ds_config", {}))
    return state
