"""A frozen reference model partitioned like the policy under ZeRO-3.

Full-fine-tuning DPO (without ``dpo.precompute_reference``) and GRPO with a KL term need the
base model beside the policy. Under ZeRO-3 a whole copy per rank would undo the partitioning, so
the copy is loaded partitioned (``HfDeepSpeedConfig`` alive while ``from_pretrained`` reads it)
and wrapped by ``deepspeed.initialize`` without an optimizer: every rank holds 1/N of its
weights and each forward gathers them layer by layer, as TRL prepares its reference model.
Every rank must therefore run the reference forward the same number of times (the DPO / GRPO
steps do: one per micro-batch). The reference uses plain ZeRO-3 even when the policy runs its
experts under AutoEP expert parallelism (it never trains, so it needs no expert sharding).
"""

from __future__ import annotations

import copy

import torch


def reference_config(ds_config: dict) -> dict:
    """The policy's DeepSpeed config without what only training needs."""
    cfg = copy.deepcopy(ds_config)
    for key in ("optimizer", "scheduler", "expert_parallel"):
        cfg.pop(key, None)
    cfg.get("zero_optimization", {}).pop("offload_optimizer", None)
    return cfg


def partitioned_reference(load, ds_config: dict, training_hf_config=None) -> torch.nn.Module:
    """``load()`` (e.g. ``train.modeling.load_model``) read partitioned, wrapped for inference,
    frozen. ``training_hf_config``: the policy's ``HfDeepSpeedConfig``, set back afterwards so
    later ``from_pretrained`` calls see what they saw before."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    cfg = reference_config(ds_config)
    hf_config = HfDeepSpeedConfig(cfg)  # alive while the copy loads: it is partitioned as read
    try:
        model = load()
    finally:
        if training_hf_config is not None:
            set_hf_deepspeed_config(training_hf_config)
        else:
            unset_hf_deepspeed_config()
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    engine.eval()
    engine.hf_config = hf_config  # kept with the engine that was configured by it
    return engine
