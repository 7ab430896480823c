"""Expert parallelism for Qwen3-VL-MoE under ZeRO-3, through DeepSpeed AutoEP.

AutoEP replaces each MoE block with a layer whose experts are split over an expert-parallel
group (grouped-GEMM experts, all-to-all token dispatch) while ZeRO-3 shards everything else.
DeepSpeed 0.19.8 ships presets for text MoE models (qwen3_moe, mixtral, ...) but none for
Qwen3-VL-MoE, whose MoE blocks sit under ``model.language_model`` and whose config nests the
routing keys in ``text_config``. A preset is the module map AutoEP needs (Qwen3-VL's is
``train.qwen3_vl.state_dict.AUTOEP_PRESET``), written into the ``expert_parallel`` section of
the DeepSpeed config with DeepSpeed's own custom-pattern keys, so nothing inside DeepSpeed is
patched. A user picks one by name (``distributed.ep_preset``).
"""

from __future__ import annotations

import re

from train.qwen3_vl.state_dict import AUTOEP_PRESET

EP_PRESETS = {"qwen3_vl_moe": AUTOEP_PRESET}


def expert_parallel_section(preset: str, ep_size: int, model_config, use_grouped_mm: bool = True) -> dict:
    """The ``expert_parallel`` block of a DeepSpeed config for ``model_config`` (a transformers
    Qwen3-VL-MoE config)."""
    if preset not in EP_PRESETS:
        raise ValueError(f"distributed.ep_preset={preset!r} is unknown; choose from {sorted(EP_PRESETS)}")
    require_experts(model_config, ep_size)
    text = getattr(model_config, "text_config", model_config)
    return {"enabled": True, "autoep_size": ep_size, "use_grouped_mm": use_grouped_mm,
            # AutoEP reads top_k from the top-level config, where the VL config has none.
            "top_k": int(text.num_experts_per_tok), **EP_PRESETS[preset]}


def require_experts(model_config, ep_size: int) -> int:
    text = getattr(model_config, "text_config", model_config)
    num_experts = getattr(text, "num_experts", None)
    if not num_experts:
        raise ValueError(f"distributed.expert_parallel={ep_size} but {model_config.model_type} is a "
                         f"dense model (no experts): set distributed.expert_parallel=1")
    return num_experts


def check_expert_parallel(model, model_config, preset: str, ep_size: int, world_size: int,
                          zero_stage: int) -> None:
    """Fail at start, saying what to change, on combinations AutoEP would reject late or
    silently ignore."""
    num_experts = require_experts(model_config, ep_size)
    if zero_stage != 3:
        raise ValueError(f"distributed.expert_parallel={ep_size} needs ZeRO stage 3 (the DeepSpeed "
                         f"config has stage {zero_stage}): set distributed.deepspeed=zero3")
    if world_size % ep_size:
        raise ValueError(f"distributed.expert_parallel={ep_size} does not divide the {world_size} "
                         f"processes: pick a divisor of the process count")
    if num_experts % ep_size:
        raise ValueError(f"distributed.expert_parallel={ep_size} does not divide the model's "
                         f"{num_experts} experts: pick a divisor of {num_experts}")
    pattern = re.compile(EP_PRESETS[preset]["moe_layer_pattern"])
    blocks = [n for n, m in model.named_modules()
              if pattern.fullmatch(n) and hasattr(m, EP_PRESETS[preset]["expert_pattern"])]
    if not blocks:
        raise ValueError(f"distributed.ep_preset={preset!r} finds no MoE block in "
                         f"{type(model).__name__} (pattern {pattern.pattern}); use a preset that "
                         f"matches this model or distributed.expert_parallel=1")
    frozen = frozen_experts(model, blocks, EP_PRESETS[preset]["expert_pattern"])
    if frozen:
        raise ValueError(f"distributed.expert_parallel={ep_size} with frozen experts (e.g. "
                         f"{frozen[0]}; LoRA freezes the base, as does train.freeze_llm): "
                         f"DeepSpeed 0.19.8's AutoEP cannot write a ZeRO-3 checkpoint holding "
                         f"frozen experts, so the run would fail at its first save. Fine-tune "
                         f"the experts in full (lora.enabled=false, train.freeze_llm=false) or set "
                         f"distributed.expert_parallel=1")


def frozen_experts(model, blocks: list[str], expert_attr: str) -> list[str]:
    """Names of the expert parameters of ``blocks`` that do not train. AutoEP's ZeRO-3 checkpoint
    stores expert weights from the optimizer's shards, which hold trainable ones only (DeepSpeed
    0.19.8 ``_save_moe_checkpoint`` raises on a frozen one)."""
    prefixes = tuple(f"{b}.{expert_attr}." for b in blocks)
    names = [n for n, p in model.named_parameters() if not p.requires_grad]
    return [n for n in names if n.startswith(prefixes)]


def local_expert_count(model) -> dict[str, int]:
    """Experts each MoE layer holds on this rank (after AutoEP: num_experts / ep_size)."""
    counts = {}
    for name, module in model.named_modules():
        n = getattr(module, "num_local_experts", None)
        if isinstance(n, int):
            counts[name] = n
    return counts
