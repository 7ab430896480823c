"""How Qwen3-VL tensors are named and laid out in files: the StateDictAdapter role.

Three layouts of the MoE experts meet in this repo:

- in memory (transformers): ``experts.gate_up_proj`` (E, 2I, H) = [gate; up] and
  ``experts.down_proj`` (E, H, I), router ``gate``;
- on the hub (the published Qwen3-VL-MoE checkpoints): the same names, transposed:
  gate_up (E, H, 2I), down (E, I, H). transformers' ``from_pretrained`` reads both, but only
  the hub layout loads under ZeRO-3 or expert-parallel sharding (shared/STACK-NOTES.md,
  pitfall 3), so every checkpoint this repo writes uses it;
- DeepSpeed AutoEP: router ``router.gate``, experts as TorchTitan-style grouped tensors
  w1 = gate (E, I, H), w3 = up (E, I, H), w2 = down (E, H, I) (deepspeed.moe.ep_repack).

The AutoEP module map (``AUTOEP_PRESET``) tells DeepSpeed where those experts sit in Qwen3-VL;
``autoep_layer_to_hf`` maps a consolidated AutoEP checkpoint back to transformers' names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from train.qwen3_vl.names import EXPERTS, EXPERTS_DOWN, EXPERTS_GATE_UP, MOE_BLOCK_RE, ROUTER

# peft wraps the model as base_model.model.<name>; AutoEP matches full module names.
PEFT_PREFIX_RE = r"(?:base_model\.model\.)?"

# The ``expert_parallel`` keys of a DeepSpeed config that tell AutoEP where Qwen3-VL-MoE keeps
# its MoE blocks (under model.language_model, which DeepSpeed's qwen3_moe preset misses) and
# how they route, in DeepSpeed's own custom-pattern keys, so nothing in DeepSpeed is patched.
AUTOEP_PRESET = {
    "moe_layer_pattern": PEFT_PREFIX_RE + MOE_BLOCK_RE,
    "router_pattern": ROUTER,
    "expert_pattern": EXPERTS,
    "num_experts_attr": "num_experts",
    "expert_w1": EXPERTS_GATE_UP,  # fused gate and up projections, (E, 2I, H) in memory
    "expert_w2": EXPERTS_DOWN,
    "expert_w3": None,
    # Qwen3-VL-MoE routing: softmax over all experts, top-k, renormalised over the k.
    "score_func": "softmax",
    "route_norm": True,
    "has_shared_experts": False,
}


def write_experts_in_hub_layout(ckpt: Path) -> None:
    """Rewrite the fused experts of a ``save_pretrained`` folder, in place, in the hub layout:
    gate_up (E, H, 2I) and down (E, I, H) instead of transformers' in-memory (E, 2I, H) /
    (E, H, I). Shapes come from the folder's config.json; tensors already in the hub layout
    are left alone."""
    from safetensors.torch import load_file, save_file

    ckpt = Path(ckpt)
    text = json.loads((ckpt / "config.json").read_text())["text_config"]
    hidden, inter = text["hidden_size"], text["moe_intermediate_size"]
    in_memory = {f"{EXPERTS}.{EXPERTS_GATE_UP}": (2 * inter, hidden),
                 f"{EXPERTS}.{EXPERTS_DOWN}": (hidden, inter)}
    for shard in sorted(ckpt.glob("*.safetensors")):
        tensors = load_file(str(shard))
        changed = False
        for name, t in tensors.items():
            for suffix, shape in in_memory.items():
                if name.endswith(suffix) and tuple(t.shape[1:]) == shape:
                    tensors[name], changed = t.transpose(1, 2).contiguous(), True
        if changed:
            save_file(tensors, str(shard), metadata={"format": "pt"})


def autoep_layer_to_hf(state: dict[str, torch.Tensor], prefix: str, ds_config: dict) -> None:
    """Rename one AutoEP MoE layer's tensors (in place) to transformers' fused-expert names.

    ``prefix``: the layer's module path (a ``ds_autoep_layers`` entry); ``ds_config``: the run's
    DeepSpeed config, whose ``expert_parallel`` section names the HF router and expert
    parameters (``AUTOEP_PRESET``'s names when it names none). gate (w1) and up (w3) are
    concatenated into one gate_up tensor unless the section names a separate ``expert_w3``.
    """
    ep = ds_config.get("expert_parallel", {})
    router = ep.get("router_pattern") or AUTOEP_PRESET["router_pattern"]
    experts = ep.get("expert_pattern") or AUTOEP_PRESET["expert_pattern"]
    w1 = ep.get("expert_w1") or AUTOEP_PRESET["expert_w1"]
    w2 = ep.get("expert_w2") or AUTOEP_PRESET["expert_w2"]
    w3 = ep.get("expert_w3")
    for suffix in ("weight", "bias"):
        name = f"{prefix}.router.gate.{suffix}"
        if name in state:
            state[f"{prefix}.{router}.{suffix}"] = state.pop(name)
    gate, up, down = (state.pop(f"{prefix}.experts.{w}") for w in ("w1", "w3", "w2"))
    if w3:  # separate gate and up parameters
        state[f"{prefix}.{experts}.{w1}"], state[f"{prefix}.{experts}.{w3}"] = gate, up
    else:
        state[f"{prefix}.{experts}.{w1}"] = torch.cat([gate, up], dim=1)
    state[f"{prefix}.{experts}.{w2}"] = down

