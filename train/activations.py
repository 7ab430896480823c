"""Activation memory for long rows: layer checkpointing (text and vision switched separately),
CPU offload of what checkpointing keeps, and tiled MLPs (``model.gradient_checkpointing``,
``vision_gradient_checkpointing``, ``activation_offload``, ``tiled_mlp_tokens``).

Checkpointing. transformers' ``GradientCheckpointingLayer`` (Qwen3-VL's decoder layers and vision
blocks) checkpoints when its ``gradient_checkpointing`` flag is set, through the function in its
``_gradient_checkpointing_func``. ``gradient_checkpointing_enable`` sets every layer of the model
alike; we set the flags per layer instead, so the vision tower can differ from the language
model (a long video is mostly vision-tower activations; a long document mostly text).
Non-reentrant ``torch.utils.checkpoint`` throughout: it needs no ``requires_grad`` input trick
under LoRA, nests (a tiled MLP inside a checkpointed layer), and works under DDP and ZeRO.

Offload. With non-reentrant checkpointing a layer keeps only its inputs, but it keeps them in
the closure of the recompute, outside the autograd graph, so
``torch.autograd.graph.save_on_cpu`` never sees them (torch's own ``checkpoint`` docstring:
the saved-tensors hooks only apply to selective checkpointing) and transformers'
``activation_checkpointing_enable(offload=True)``, which wraps ``checkpoint`` in
``save_on_cpu``, keeps them on the GPU. ``offloaded_checkpoint`` copies each tensor input to host
memory (pinned, asynchronous) *before* it enters the checkpoint and copies it back inside the
recomputed function; the copies are ordinary differentiable ops, so gradients flow back to
the device tensor, and the device input is freed as soon as the caller drops it. On a CPU the
copy replaces the original (same memory, one memcpy per layer): correct, no saving.

Tiled MLP. ``tiled_mlp_tokens=N`` runs each language-model MLP over tiles of N tokens, each tile
in its own checkpoint, so neither forward nor backward holds more than one tile's
``[N, intermediate]`` activations. Per-token independent, hence exact up to float summation
order. Our own few lines rather than DeepSpeed's ``TiledMLP``: that one runs
``torch.autograd.backward`` per tile inside its backward, so every tile accumulates into the
weights' ``.grad`` separately (DDP's reducer then sees a parameter ready once per tile and
fails), and it needs ZeRO-3 parameters listed by hand; per-tile checkpoints leave gradient
accumulation to autograd (one ready-signal per parameter) and re-enter the Linear modules, whose
hooks gather ZeRO-3 weights. For MoE, the router runs once over all tokens (the router-loss
hooks of ``train/moe.py`` see one call per layer, as without tiling) and the experts run per
tile (routing is per token, no capacity limit, so tiling is exact); the experts are called
through their outermost module, so peft's expert LoRA (a context around that call) is active
in the recompute too. DeepSpeed AutoEP replaces the MoE blocks after this runs; its blocks are
not tiled.
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from train.params import part_of
from train.qwen3_vl.names import LLM_LAYERS, MLP


def plain_checkpoint(function, *args, **kwargs):
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    pin = t.device.type != "cpu" and torch.cuda.is_available()
    held = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
    return held.copy_(t, non_blocking=pin)  # differentiable: the gradient goes back to t.device


def offloaded_checkpoint(function, *args, **kwargs):
    """``checkpoint`` that holds its tensor inputs in host memory until the recompute."""
    moved = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if not moved:
        return plain_checkpoint(function, *args, **kwargs)
    devices = {i: args[i].device for i in moved}
    held = list(args)
    for i in moved:
        held[i] = _to_host(args[i])
    device = next((d for d in devices.values() if d.type != "cpu"), None)
    # checkpoint saves and restores the RNG state of the devices its tensor inputs live on; the
    # inputs now live on the host, so an empty tensor tells it which device the layer runs on.
    anchor = [torch.empty(0, device=device)] if device is not None else []

    def run(*inputs):
        inputs = list(inputs[len(anchor):])
        for i in moved:
            inputs[i] = inputs[i].to(devices[i], non_blocking=True)
        return function(*inputs)

    return plain_checkpoint(run, *anchor, *held, **kwargs)


def _is_vision(name: str) -> bool:
    return part_of(name) in ("vision", "merger")


def set_checkpointing(model: nn.Module, text: bool, vision: bool, offload: bool = False) -> dict:
    """Checkpoint the language model's decoder layers if ``text`` and the vision tower's blocks if
    ``vision``; ``offload``: their inputs wait in host memory. Returns the layer counts set."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    func = offloaded_checkpoint if offload else plain_checkpoint
    counts = {"text": 0, "vision": 0}
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            part = "vision" if _is_vision(name) else "text"
            module.gradient_checkpointing = vision if part == "vision" else text
            module._gradient_checkpointing_func = func
            counts[part] += module.gradient_checkpointing
    for part, wanted, what in (("text", text, "language model"), ("vision", vision, "vision tower")):
        if wanted and not counts[part]:
            raise ValueError(f"{type(model).__name__}: no checkpointable {what} layers found; is "
                             f"this a Qwen3-VL model from transformers?")
    return counts


# --- tiled MLP -------------------------------------------------------------------------------

MLP_MODULE = re.compile(rf"(?:.*\.)?{re.escape(LLM_LAYERS)}\.\d+\.{MLP}")


def _tile(function, *tensors):
    if torch.is_grad_enabled():
        return checkpoint(function, *tensors, use_reentrant=False)
    return function(*tensors)


def _tiled_dense_forward(self, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    forward = functools.partial(type(self).forward, self)  # the class's own, via child modules
    out = [_tile(forward, part) for part in flat.split(self.tiled_mlp_tokens)]
    return torch.cat(out).view(*x.shape[:-1], -1)


def _tiled_moe_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # transformers' Qwen3VLMoeTextSparseMoeBlock.forward, with the experts called per tile.
    batch, seq, hidden = hidden_states.shape
    flat = hidden_states.view(-1, hidden)
    _, weights, chosen = self.gate(flat)
    n = self.tiled_mlp_tokens
    tiles = zip(flat.split(n), chosen.split(n), weights.split(n))
    out = [_tile(self.experts, h, c, w) for h, c, w in tiles]
    return torch.cat(out).reshape(batch, seq, hidden)


def tile_mlps(model: nn.Module, tokens: int) -> dict:
    """Run every language-model MLP of ``model`` over tiles of ``tokens`` tokens (see the module
    docstring); call it on the final module tree (after peft). Returns counts per kind."""
    if tokens <= 0:
        raise ValueError(f"model.tiled_mlp_tokens must be > 0 to tile, got {tokens}")
    counts = {"dense": 0, "moe": 0}
    for name, module in model.named_modules():
        if not MLP_MODULE.fullmatch(name):
            continue
        if all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            kind, forward = "dense", _tiled_dense_forward
        elif type(module).__name__ == "Qwen3VLMoeTextSparseMoeBlock":
            kind, forward = "moe", _tiled_moe_forward
        else:
            raise ValueError(f"{name} is a {type(module).__name__}, which tiled MLP does not know; "
                             f"set model.tiled_mlp_tokens=0")
        module.tiled_mlp_tokens = tokens
        module.forward = forward.__get__(module)  # this instance only; state_dict unchanged
        counts[kind] += 1
    if not sum(counts.values()):
        raise ValueError(f"{type(model).__name__} has no '{LLM_LAYERS}.<i>.{MLP}' module to tile; "
                         f"set model.tiled_mlp_tokens=0")
    return counts


def apply_activation_memory(model: nn.Module, model_cfg) -> nn.Module:
    """The four ``model.*`` switches on ``model`` (the final module tree, after peft)."""
    text = model_cfg.gradient_checkpointing
    vision = model_cfg.vision_gradient_checkpointing
    vision = text if vision is None else vision
    if text or vision:
        set_checkpointing(model, text, vision, model_cfg.activation_offload)
    if model_cfg.tiled_mlp_tokens:
        tile_mlps(model, model_cfg.tiled_mlp_tokens)
    return model
