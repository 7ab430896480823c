"""Module and parameter names of transformers' Qwen3-VL classes (``Qwen3VLForConditionalGeneration``
and ``Qwen3VLMoeForConditionalGeneration``), as ``named_modules`` / ``named_parameters`` of the
bare model spell them.

LoRA presets, the freeze parts, AutoEP's module map and the vLLM adapter check all match these;
one copy means a rename in transformers is fixed here once. Names are plain strings; the
``*_RE`` constants are regular-expression fragments built from them (full-match them, add a
wrapper prefix in front where peft or DeepSpeed put one).
"""

from __future__ import annotations

import re

# --- language model -----------------------------------------------------------------------------
LANGUAGE_MODEL = "model.language_model"
LLM_LAYERS = f"{LANGUAGE_MODEL}.layers"  # decoder layers, LLM_LAYERS.<i>
ATTENTION = "self_attn"  # in a decoder layer
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = "mlp"  # in a decoder layer: a dense MLP, or on MoE layers the sparse MoE block
DENSE_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# A MoE block holds the router and the experts, whose weights are fused 3D parameters (one
# tensor for all experts), not nn.Linear modules.
ROUTER = "gate"
EXPERTS = "experts"
EXPERTS_GATE_UP = "gate_up_proj"  # gate and up projections of every expert, concatenated
EXPERTS_DOWN = "down_proj"
FUSED_EXPERT_PARAMETERS = (EXPERTS_GATE_UP, EXPERTS_DOWN)
LM_HEAD = "lm_head"

# --- vision tower and mergers -------------------------------------------------------------------
VISUAL = "model.visual"
PATCH_EMBED = f"{VISUAL}.patch_embed.proj"  # a Conv3d whose stride is its kernel
POSITION_EMBED = f"{VISUAL}.pos_embed"  # the learned position table (an Embedding)
VISION_BLOCKS = f"{VISUAL}.blocks"  # VISION_BLOCKS.<i>, config.vision_config.depth of them
VISION_BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
MERGER = f"{VISUAL}.merger"
# One merger per entry of config.vision_config.deepstack_visual_indexes, DEEPSTACK_MERGERS.<i>.
DEEPSTACK_MERGERS = f"{VISUAL}.deepstack_merger_list"
MERGER_LINEARS = ("linear_fc1", "linear_fc2")  # in the merger and in each deepstack merger


def _any(names) -> str:
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


LLM_LAYER_RE = re.escape(LLM_LAYERS) + r"\.\d+"
ATTENTION_PROJECTION_RE = rf"{LLM_LAYER_RE}\.{ATTENTION}\.{_any(ATTENTION_PROJECTIONS)}"
DENSE_MLP_PROJECTION_RE = rf"{LLM_LAYER_RE}\.{MLP}\.{_any(DENSE_MLP_PROJECTIONS)}"
MOE_BLOCK_RE = rf"{LLM_LAYER_RE}\.{MLP}"
FUSED_EXPERT_RE = rf"{MOE_BLOCK_RE}\.{EXPERTS}\.{_any(FUSED_EXPERT_PARAMETERS)}"
VISION_BLOCK_LINEAR_RE = rf"{re.escape(VISION_BLOCKS)}\.\d+\.{_any(VISION_BLOCK_LINEARS)}"
MERGER_LINEAR_RE = (rf"(?:{re.escape(MERGER)}|{re.escape(DEEPSTACK_MERGERS)}\.\d+)"
                    rf"\.{_any(MERGER_LINEARS)}")

# The three parts a user freezes or trains independently (train/params.py), matched in this
# order against bare names + "."; the mergers sit inside model.visual, so they come first.
PART_PATTERNS = (
    ("merger", re.compile(rf"(?:{re.escape(MERGER)}|{re.escape(DEEPSTACK_MERGERS)})\.")),
    ("vision", re.compile(rf"{re.escape(VISUAL)}\.")),
    ("llm", re.compile(rf"(?:{re.escape(LANGUAGE_MODEL)}|{re.escape(LM_HEAD)})\.")),
)


def vision_module_names(config) -> list[str]:
    """Full names of the modules with a weight LoRA can adapt (Linear, Conv3d, Embedding) in
    the vision tower, the merger and the deepstack mergers of a model built from ``config``:
    the patch embedding, the position table, every block's linears and every merger's.

    Depth and merger count come from ``config.vision_config`` (``depth``,
    ``deepstack_visual_indexes``), so the list is exact for any size of model.
    """
    vision = config.vision_config
    mergers = [MERGER] + [f"{DEEPSTACK_MERGERS}.{i}"
                          for i in range(len(vision.deepstack_visual_indexes))]
    return ([PATCH_EMBED, POSITION_EMBED]
            + [f"{VISION_BLOCKS}.{i}.{linear}" for i in range(vision.depth)
               for linear in VISION_BLOCK_LINEARS]
            + [f"{merger}.{linear}" for merger in mergers for linear in MERGER_LINEARS])
