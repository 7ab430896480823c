"""Which parameters learn, and at what rate: the model's three parts, freeze switches, optimizer groups.

Qwen3-VL has three parts a user freezes or trains independently (``train.freeze_*``):

- ``vision``: the vision tower (patch embedding, position table, transformer blocks);
- ``merger``: the patch merger and the deepstack mergers that feed visual features to the LLM;
- ``llm``: the language model and ``lm_head`` (with tied embeddings these are one tensor, in
  one part, so freezing is never ambiguous).

Every parameter of a Qwen3-VL model (dense or MoE, bare or wrapped by peft, DDP or DeepSpeed)
belongs to exactly one part; a name that fits none is an error, so a model variant with an
unknown component cannot silently train (or silently stay frozen).

Optimizer groups: ``train.vision_lr`` / ``train.merger_lr`` for those parts (LoRA adapters
included), ``train.lr`` for the LLM. Weight decay applies to parameters with two or more
dimensions (matrices, embeddings, 3D expert stacks, LoRA A/B) and never to 1-D ones (biases,
LayerNorm / RMSNorm weights, DoRA magnitudes): decaying a norm's gain or a bias towards zero
only fights the model's scale and offset.
"""

from __future__ import annotations

from train.qwen3_vl.names import PART_PATTERNS

PARTS = ("vision", "merger", "llm")
# The TrainConfig switch that freezes each part.
FREEZE_SWITCHES = {"vision": "freeze_vision", "merger": "freeze_merger", "llm": "freeze_llm"}
# What DDP / DeepSpeed (module.) and peft (base_model.model.) put in front of the model's names.
WRAPPER_PREFIXES = ("module.", "base_model.model.")


def model_name(name: str) -> str:
    """``name`` as the bare transformers model calls it (wrapper prefixes removed)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def part_of(name: str) -> str:
    """The part (``vision``, ``merger`` or ``llm``) a parameter or module name belongs to."""
    bare = model_name(name)
    for part, pattern in PART_PATTERNS:
        if pattern.match(bare + "."):  # the "." lets a module name such as "lm_head" match too
            return part
    raise ValueError(f"parameter {name!r} belongs to none of the Qwen3-VL parts {PARTS} "
                     f"(vision tower, merger, LLM); is this a Qwen3-VL model?")


def classify(model) -> dict[str, list[str]]:
    """Every parameter name of ``model`` by part, tied aliases included.

    A tensor reachable under two names (tied embeddings) must fall in one part, else a freeze
    switch would both freeze and train it.
    """
    by_part = {part: [] for part in PARTS}
    part_of_tensor: dict[int, tuple[str, str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        part = part_of(name)
        seen = part_of_tensor.setdefault(id(param), (part, name))
        if seen[0] != part:
            raise ValueError(f"{name} ({part}) and {seen[1]} ({seen[0]}) are one tied tensor in "
                             f"two parts; untie them before freezing either part")
        by_part[part].append(name)
    return by_part


def frozen_parts(train_cfg) -> set[str]:
    return {part for part in PARTS if getattr(train_cfg, FREEZE_SWITCHES[part])}


def freeze_parts(model, train_cfg) -> dict[str, int]:
    """Full fine-tuning: every parameter of an unfrozen part trains, every other one is frozen.

    Returns the number of trainable elements per part (for the start-up log).
    """
    frozen = frozen_parts(train_cfg)
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) not in frozen)
    return trainable_counts(model)


def trainable_counts(model) -> dict[str, int]:
    """Trainable elements per part."""
    counts = {part: 0 for part in PARTS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[part_of(name)] += param_numel(param)
    return counts


def param_shape(param) -> tuple[int, ...]:
    # Under ZeRO-3 a partitioned parameter's .shape is empty; its real shape is ds_shape.
    return tuple(getattr(param, "ds_shape", param.shape))


def param_numel(param) -> int:
    n = 1
    for d in param_shape(param):
        n *= d
    return n


def part_lr(part: str, train_cfg) -> float:
    lr = {"vision": train_cfg.vision_lr, "merger": train_cfg.merger_lr}.get(part)
    return train_cfg.lr if lr is None else lr


def param_groups(model, train_cfg) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters, as plain dicts.

    One group per part and decay kind, named ``vision``, ``vision.no_decay``, ``merger``,
    ``merger.no_decay``, ``llm``, ``llm.no_decay`` (empty ones dropped); each has ``params``,
    ``lr``, ``weight_decay`` and ``name``. Pass the list to ``torch.optim.AdamW(groups)`` or as
    DeepSpeed's ``model_parameters``. Call it on the model before DDP / DeepSpeed wrap it; the
    order is deterministic, so optimizer state saved from one run loads into the next.
    """
    groups = {(part, decay): [] for part in PARTS for decay in (True, False)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[(part_of(name), len(param_shape(param)) >= 2)].append(param)
    return [{"name": part if decay else f"{part}.no_decay", "params": params,
             "lr": part_lr(part, train_cfg),
             "weight_decay": train_cfg.weight_decay if decay else 0.0}
            for (part, decay), params in groups.items() if params]
