"""LoRA target presets for Qwen3-VL, named in configs (``lora.targets``).

Module names are those of transformers' Qwen3-VL classes (dense and MoE alike). A preset is a
regular expression over full module names, so presets combine with ``|`` and never reach parts
of the model the user did not name (peft's "all-linear" would also wrap the vision tower).
"""

from __future__ import annotations

LLM = r"model\.language_model\.layers\.\d+"
VISION = r"model\.visual"
TARGET_PRESETS = {
    "llm_attn": LLM + r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    "llm_mlp": LLM + r"\.mlp\.(gate_proj|up_proj|down_proj)",  # dense MLPs
    "vision": VISION + r"\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.linear_fc1|mlp\.linear_fc2)",
    "merger": VISION + r"\.(merger|deepstack_merger_list\.\d+)\.(linear_fc1|linear_fc2)",
}


def target_regex(targets: list[str]) -> str:
    return "(?:" + "|".join(TARGET_PRESETS[t] for t in targets) + ")"


def apply_lora(model, cfg):
    """Wrap ``model`` with peft LoRA adapters as ``cfg`` (a LoraConfig section) says."""
    import re

    from peft import LoraConfig, get_peft_model

    regex = target_regex(cfg.targets)
    names = [n for n, _ in model.named_modules()]
    if not any(re.fullmatch(regex, n) for n in names):
        raise ValueError(f"lora.targets {cfg.targets} match no module of {type(model).__name__}; "
                         f"pick presets that exist in this model")
    for m in cfg.modules_to_save:
        if not any(n == m or n.endswith("." + m) for n in names):
            raise ValueError(f"lora.modules_to_save: no module named {m!r} in {type(model).__name__}")
    peft_config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules=regex, modules_to_save=cfg.modules_to_save or None)
    return get_peft_model(model, peft_config)
