"""The published Qwen3-VL-8B and Qwen3-VL-30B-A3B shapes, as transformers configs.

GPU benchmarks and the FLOP-formula tests build "8B-shaped" and "30B-A3B-shaped" models from
random weights (no hub access), optionally with fewer decoder layers so they fit one device.
The numbers are those of the released ``config.json`` files (Qwen/Qwen3-VL-8B-Instruct and
Qwen/Qwen3-VL-30B-A3B-Instruct; the Thinking variants share them), written in transformers 5's
``rope_parameters`` form. Cross-check: with every layer, the analytic parameter counts of
``train.qwen3_vl.flops.param_counts`` give 8.77B and 31.07B, the published totals.
"""

from __future__ import annotations

# Shared by both releases: SigLIP-2-style vision tower (27 blocks, width 1152), patch 16,
# 2x2 spatial merge, 2-frame temporal patches, deepstack taps after blocks 8, 16 and 24.
VISION = dict(
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3,
    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh",
)
ROPE = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
        "mrope_interleaved": True}
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)
TEXT_COMMON = dict(
    vocab_size=151936, head_dim=128, hidden_act="silu", max_position_embeddings=262144,
    rms_norm_eps=1e-6, attention_bias=False, rope_parameters=ROPE, bos_token_id=151643,
    eos_token_id=151645,
)

QWEN3_VL_8B_TEXT = dict(
    TEXT_COMMON, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
)
QWEN3_VL_30B_A3B_TEXT = dict(
    TEXT_COMMON, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
    num_attention_heads=32, num_key_value_heads=4, moe_intermediate_size=768, num_experts=128,
    num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
    tie_word_embeddings=False,
)


def _vision(out_hidden_size: int, vision_depth: int | None) -> dict:
    vision = dict(VISION, out_hidden_size=out_hidden_size)
    if vision_depth is not None:
        # A shallower tower keeps the deepstack taps that still exist.
        vision["depth"] = vision_depth
        vision["deepstack_visual_indexes"] = [i for i in VISION["deepstack_visual_indexes"]
                                              if i < vision_depth]
    return vision


def qwen3_vl_8b_config(num_hidden_layers: int | None = None, vision_depth: int | None = None):
    """``Qwen3VLConfig`` with the shapes of Qwen3-VL-8B; fewer decoder layers / vision blocks
    on request (every other dimension stays as published)."""
    from transformers import Qwen3VLConfig

    text = dict(QWEN3_VL_8B_TEXT)
    if num_hidden_layers is not None:
        text["num_hidden_layers"] = num_hidden_layers
    return Qwen3VLConfig(text_config=text, vision_config=_vision(4096, vision_depth),
                         tie_word_embeddings=False, **TOKEN_IDS)


def qwen3_vl_30b_a3b_config(num_hidden_layers: int | None = None, vision_depth: int | None = None):
    """``Qwen3VLMoeConfig`` with the shapes of Qwen3-VL-30B-A3B (128 experts, 8 active per
    token); fewer decoder layers / vision blocks on request."""
    from transformers import Qwen3VLMoeConfig

    text = dict(QWEN3_VL_30B_A3B_TEXT)
    if num_hidden_layers is not None:
        text["num_hidden_layers"] = num_hidden_layers
    return Qwen3VLMoeConfig(text_config=text, vision_config=_vision(2048, vision_depth),
                            tie_word_embeddings=False, **TOKEN_IDS)


SHAPES = {"qwen3-vl-8b": qwen3_vl_8b_config, "qwen3-vl-30b-a3b": qwen3_vl_30b_a3b_config}
