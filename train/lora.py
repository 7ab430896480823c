"""LoRA target presets for Qwen3-VL, named in configs (``lora.targets``), and the peft wrap.

Module names are those of transformers' Qwen3-VL classes (dense and MoE alike), from
``train.qwen3_vl.names``. A preset is a regular expression over full module names (or, for MoE
experts, full parameter names), so presets combine with ``|`` and never reach parts of the model
the user did not name (peft's "all-linear" would also wrap the vision tower).

MoE experts are fused 3D parameters, not ``nn.Linear`` modules; the ``experts`` preset reaches
them through peft's ``target_parameters`` (one low-rank pair per expert). peft supports neither
DoRA nor dropout there, which is a config error here rather than a stack trace.

The freeze switches of ``train`` bind LoRA too: a preset or a ``modules_to_save`` entry inside a
frozen part is an error naming the key to change (Qwen's own script silently ignores them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from train.params import FREEZE_SWITCHES, frozen_parts, part_of
from train.qwen3_vl.names import (ATTENTION_PROJECTION_RE, DENSE_MLP_PROJECTION_RE, FUSED_EXPERT_RE,
                                  MERGER_LINEAR_RE, VISION_BLOCK_LINEAR_RE)


@dataclass(frozen=True)
class Preset:
    pattern: str  # regex, full match against module names (parameter names if on_parameters)
    part: str  # the part of the model (train.params.PARTS) it adapts
    on_parameters: bool = False  # fused nn.Parameters reached by peft's target_parameters
    when_missing: str = ""  # what to use instead when the model has nothing it matches


TARGET_PRESETS = {
    "llm_attn": Preset(ATTENTION_PROJECTION_RE, "llm"),
    "llm_mlp": Preset(DENSE_MLP_PROJECTION_RE, "llm",
                      when_missing="a MoE model has no dense MLP; adapt its experts with 'experts'"),
    "experts": Preset(FUSED_EXPERT_RE, "llm", on_parameters=True,
                      when_missing="a dense model has no MoE experts; adapt its MLPs with 'llm_mlp'"),
    "vision": Preset(VISION_BLOCK_LINEAR_RE, "vision"),
    "merger": Preset(MERGER_LINEAR_RE, "merger"),
}


def target_regex(targets: list[str]) -> str:
    """One regex for the module presets among ``targets`` ("" when there are none)."""
    patterns = [TARGET_PRESETS[t].pattern for t in targets if not TARGET_PRESETS[t].on_parameters]
    return "(?:" + "|".join(patterns) + ")" if patterns else ""


def validate_lora(lora_cfg, train_cfg=None) -> None:
    """Checks that need no model: presets against freeze switches, and what peft cannot do."""
    frozen = frozen_parts(train_cfg) if train_cfg is not None else set()
    for target in lora_cfg.targets:
        part = TARGET_PRESETS[target].part
        if part in frozen:
            switch = FREEZE_SWITCHES[part]
            raise ValueError(f"lora.targets includes {target!r}, which adapts the {part} part, but "
                             f"train.{switch}=true freezes it; remove {target!r} from lora.targets "
                             f"or set train.{switch}=false")
    if "experts" in lora_cfg.targets:
        if lora_cfg.use_dora:
            raise ValueError("lora.use_dora=true is not supported for the 'experts' preset (peft has "
                             "no DoRA for fused expert parameters); set lora.use_dora=false or "
                             "remove 'experts' from lora.targets")
        if lora_cfg.dropout:
            raise ValueError("lora.dropout must be 0 with the 'experts' preset (peft cannot apply "
                             "dropout to fused expert parameters); set lora.dropout=0 or remove "
                             "'experts' from lora.targets")


def resolve_targets(model, targets: list[str]) -> tuple[list[str], list[str]]:
    """Full names of the modules and of the fused parameters ``targets`` adapt in ``model``.

    A preset that matches nothing here is an error saying what to use instead.
    """
    module_names = [n for n, _ in model.named_modules()]
    param_names = [n for n, _ in model.named_parameters()]
    modules, params = [], []
    for target in targets:
        preset = TARGET_PRESETS[target]
        names = param_names if preset.on_parameters else module_names
        found = [n for n in names if re.fullmatch(preset.pattern, n)]
        if not found:
            hint = preset.when_missing or "remove it from lora.targets"
            raise ValueError(f"lora.targets: preset {target!r} would match no module of "
                             f"{type(model).__name__}; {hint}")
        (params if preset.on_parameters else modules).extend(found)
    return modules, params


def resolve_modules_to_save(model, entries: list[str]) -> dict[str, list[str]]:
    """The modules each ``lora.modules_to_save`` entry names, matched as peft matches them."""
    names = [n for n, _ in model.named_modules(remove_duplicate=False)]
    resolved = {}
    for entry in entries:
        resolved[entry] = [n for n in names if n.endswith(entry)]
        if not resolved[entry]:
            raise ValueError(f"lora.modules_to_save: no module named {entry!r} in "
                             f"{type(model).__name__}")
    return resolved


def check_modules_to_save(model, entries: list[str], train_cfg) -> None:
    frozen = frozen_parts(train_cfg)
    for entry, modules in resolve_modules_to_save(model, entries).items():
        for module in modules:
            part = part_of(module)
            if part in frozen:
                switch = FREEZE_SWITCHES[part]
                raise ValueError(f"lora.modules_to_save includes {entry!r} ({module}, in the {part} "
                                 f"part), but train.{switch}=true freezes that part; remove "
                                 f"{entry!r} from lora.modules_to_save or set train.{switch}=false")


def check_trainable(peft_model, train_cfg=None) -> None:
    """After wrapping: only adapters and modules_to_save copies train, none in a frozen part."""
    frozen = frozen_parts(train_cfg) if train_cfg is not None else set()
    for name, param in peft_model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_" not in name and ".modules_to_save." not in name:
            raise RuntimeError(f"{name} is trainable after the LoRA wrap, but is neither an "
                               f"adapter nor a modules_to_save copy")
        if part_of(name) in frozen:
            raise RuntimeError(f"{name} is trainable but its part, {part_of(name)}, is frozen")


def apply_lora(model, lora_cfg, train_cfg=None):
    """Wrap ``model`` with peft LoRA adapters as ``lora_cfg`` (a LoraConfig section) says.

    ``train_cfg`` (the TrainConfig section) supplies the freeze switches; without it no part is
    frozen. Every base weight ends up frozen; adapters and ``modules_to_save`` copies train.
    """
    from peft import LoraConfig, get_peft_model

    validate_lora(lora_cfg, train_cfg)
    modules, params = resolve_targets(model, lora_cfg.targets)
    if train_cfg is not None:
        check_modules_to_save(model, lora_cfg.modules_to_save, train_cfg)
    else:
        resolve_modules_to_save(model, lora_cfg.modules_to_save)
    peft_config = LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        use_rslora=lora_cfg.use_rslora, use_dora=lora_cfg.use_dora,
        # [] rather than None: None would make peft fall back to its own defaults for the model.
        target_modules=target_regex(lora_cfg.targets) if modules else [],
        # Full parameter names: peft matches them exactly (or by suffix), so only the named
        # experts are reached.
        target_parameters=params or None,
        modules_to_save=lora_cfg.modules_to_save or None)
    wrapped = get_peft_model(model, peft_config)
    check_trainable(wrapped, train_cfg)
    return wrapped
