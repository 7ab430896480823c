"""Load a Qwen3-VL checkpoint (dense or MoE) and its processor, as from the hub.

The model class comes from the checkpoint's ``config.json`` (``model_type`` qwen3_vl or
qwen3_vl_moe) through transformers' auto classes, never from the folder name. Training, eval and
export all load here, so the vision patch embedding's compute form (``patch_embed``, see
``train/qwen3_vl/patch_embed.py``) is the same everywhere unless a caller asks otherwise.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(path: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def load_model(path: str, dtype: str = "float32", attn_implementation: str = "sdpa",
               adapter: str | None = None, experts_implementation: str | None = None,
               patch_embed: str = "auto"):
    """``path``: a full checkpoint; ``adapter``: an optional peft adapter folder on top of it;
    ``patch_embed``: auto / conv3d / linear (``model.patch_embed``; weights and outputs are the
    same either way, only the speed differs)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from train.qwen3_vl.patch_embed import resolve, set_patch_embed

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ("qwen3_vl", "qwen3_vl_moe"):
        raise ValueError(f"{path}: model_type {config.model_type!r} is not Qwen3-VL "
                         f"(expected qwen3_vl or qwen3_vl_moe)")
    resolve(patch_embed)  # a bad value fails before the weights load
    kwargs = {}
    if experts_implementation is not None:
        if config.model_type != "qwen3_vl_moe":
            raise ValueError(f"model.experts_implementation={experts_implementation!r} applies to MoE "
                             f"checkpoints; {path} is dense: remove the key")
        kwargs["experts_implementation"] = experts_implementation
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **kwargs)
    set_patch_embed(model, patch_embed)  # before peft, which may wrap or copy the Conv3d
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model
