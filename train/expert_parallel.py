"""Expert parallelism for Qwen3-VL-MoE under ZeRO-3, through DeepSpeed AutoEP.

AutoEP replaces each MoE block with a layer whose experts are split over an expert-parallel
group (grouped-GEMM experts, all-to-all token dispatch) while ZeRO-3 shards everything else.
DeepSpeed 0.19.8 ships presets for text MoE models (qwen3_moe, mixtral, ...) but none for
Qwen3-VL-MoE, whose MoE blocks sit under ``model.language_model`` and whose config nests the
routing keys in ``text_config``. A preset is the module map AutoEP needs (Qwen3-VL's is
``train.qwen3_vl.state_dict.AUTOEP_PRESET``), written into the ``expert_parallel`` section of
the DeepSpeed config with DeepSpeed's own custom-pattern keys, so nothing inside DeepSpeed is
patched. A user picks one by name (``distributed.ep_preset``).

Frozen experts (LoRA on attention, or ``train.freeze_llm``): DeepSpeed 0.19.8's AutoEP ZeRO-3
checkpoint (``save_checkpoint`` -> ``_save_moe_checkpoint``) stores expert weights only through
the optimizer's shards and raises on a frozen expert, whatever ``exclude_frozen_parameters``
says. Frozen weights never change, so such a run keeps only what trains: the engine writes the
ZeRO-3 optimizer's own state (fp32 master partitions of the trainable parameters, Adam moments),
the schedule and DeepSpeed's step counters per rank (``DeepSpeedEngine.save``), and a resume
rebuilds the frozen base (experts included) from ``model.path`` before loading that state. The
trained weights leave the run as the gathered adapter (``model/``, ``final/``), which export
merges into the base. Full fine-tuning with frozen experts (``train.freeze_llm`` without LoRA)
stays refused: its weights leave the run only through DeepSpeed's shards.
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
    expert_lora = [n for n, _ in model.named_parameters()
                   if n.startswith(_prefixes(blocks, EP_PRESETS[preset]["expert_pattern"])) and "lora_" in n]
    if expert_lora:
        raise ValueError(f"distributed.expert_parallel={ep_size} with LoRA on the experts (e.g. "
                         f"{expert_lora[0]}): AutoEP replaces each MoE block by its own grouped "
                         f"experts, which peft's adapters cannot follow. Drop 'experts' from "
                         f"lora.targets (attention adapters train with frozen experts under expert "
                         f"parallelism) or set distributed.expert_parallel=1")
    frozen = frozen_experts(model, blocks, EP_PRESETS[preset]["expert_pattern"])
    if frozen and not hasattr(model, "peft_config"):
        raise ValueError(f"distributed.expert_parallel={ep_size} with frozen experts in a full "
                         f"fine-tune (e.g. {frozen[0]}; train.freeze_llm freezes them): its "
                         f"weights leave the run only through DeepSpeed's ZeRO-3 shards, and "
                         f"DeepSpeed 0.19.8's AutoEP cannot write frozen experts into them. Train "
                         f"with LoRA instead (lora.enabled=true: the adapter holds every trained "
                         f"weight and the frozen experts are reloaded from model.path), train the "
                         f"experts (train.freeze_llm=false) or set distributed.expert_parallel=1")


def _prefixes(blocks: list[str], expert_attr: str) -> tuple[str, ...]:
    return tuple(f"{b}.{expert_attr}." for b in blocks)


def frozen_experts(model, blocks: list[str], expert_attr: str) -> list[str]:
    """Names of the expert parameters of ``blocks`` that do not train. AutoEP's ZeRO-3 checkpoint
    stores expert weights from the optimizer's shards, which hold trainable ones only (DeepSpeed
    0.19.8 ``_save_moe_checkpoint`` raises on a frozen one)."""
    prefixes = _prefixes(blocks, expert_attr)
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


def autoep_frozen_experts(model) -> list[str]:
    """Frozen expert parameters of the AutoEP layers in ``model`` (after ``deepspeed.initialize``):
    what DeepSpeed 0.19.8's ``save_checkpoint`` refuses under ZeRO-3."""
    try:
        from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer
    except ImportError:
        return []
    return [f"{name}.experts.{w}" for name, module in model.named_modules()
            if isinstance(module, AutoEPMoELayer)
            for w, p in module.experts.named_parameters(recurse=False) if not p.requires_grad]
