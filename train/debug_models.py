"""Debug-size Qwen3-VL configs (dense and MoE) built from transformers' own classes, and the
tiny checkpoints made from them.

These stand in for the published checkpoints (``train.qwen3_vl.shapes``) in tests and the
demo. They keep every structural feature of the real models (MRoPE with interleaved sections,
deepstack visual layers, patch 16 / merge 2 / temporal patch 2 vision tower, fused MoE experts)
at a size that trains on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from train.qwen3_vl.state_dict import write_experts_in_hub_layout

TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rms_norm_eps=1e-6,
    # Init scale ~1/sqrt(width): at the default 0.02 a 64-wide random model's logits and visual
    # features are too small for fine-tuning to move them within a CPU-sized run.
    initializer_range=0.1,
    # mrope_section sums to head_dim / 2; interleaved as in Qwen3-VL. rope_theta is scaled to
    # the tiny head_dim: with 8 frequencies and Qwen's 5e6, neighbouring image columns differ by
    # 0.02 rad and a fine-tune cannot learn where anything is (grounding stays at chance).
    rope_parameters={"rope_type": "default", "rope_theta": 100.0,
                     "mrope_section": [4, 2, 2], "mrope_interleaved": True},
)
VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
    num_position_embeddings=64,  # a perfect square, as the position-embedding grid requires
    deepstack_visual_indexes=[0, 1],
    initializer_range=0.1,
)
# 2 * moe_intermediate_size != hidden_size, so square expert weights cannot hide layout mistakes.
MOE = dict(moe_intermediate_size=48, num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1)


def tiny_config(kind: str, tokenizer):
    """Config for ``kind`` in {"dense", "moe"} whose special-token ids match ``tokenizer``."""
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id)
    if kind == "dense":
        from transformers import Qwen3VLConfig
        return Qwen3VLConfig(text_config=text, vision_config=dict(VISION), **ids)
    if kind == "moe":
        from transformers import Qwen3VLMoeConfig
        return Qwen3VLMoeConfig(text_config=dict(text, **MOE), vision_config=dict(VISION), **ids)
    raise ValueError(f"unknown tiny model kind {kind!r}; choose 'dense' or 'moe'")


def build_tiny_checkpoint(out_dir: str | Path, kind: str, seed: int = 0, processor=None) -> Path:
    """Write a randomly initialised tiny checkpoint plus its processor, loadable with from_pretrained.

    MoE experts are stored in the hub layout of the published Qwen3-VL-MoE checkpoints.
    """
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from data.processor import build_processor

    out_dir = Path(out_dir)
    processor = processor or build_processor()
    tok = processor.tokenizer
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config(kind, tok))
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.pad_token_id], pad_token_id=tok.pad_token_id,
        do_sample=False, max_new_tokens=64)
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    if kind == "moe":
        write_experts_in_hub_layout(out_dir)
    return out_dir
