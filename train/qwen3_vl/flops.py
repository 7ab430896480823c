"""Model FLOPs of a training step, and MFU (model FLOPs utilisation), for Qwen3-VL.

MFU = model FLOPs of the tokens and patches actually trained on / (seconds x peak FLOP/s of the
devices). "Model FLOPs" follow the PaLM convention: the matmul FLOPs a forward pass needs
(2 per multiply-add), times 3 for forward + backward (the backward pass costs two forwards:
gradients with respect to activations and to weights). Recomputation under gradient
checkpointing is not counted (that would be hardware FLOPs), nor are norms, activations,
rotary embeddings or the vision position-table interpolation (elementwise, <0.1% here).
Frozen parts are counted with the same factor 3, as MFU conventionally is.

The count comes from the checkpoint's config, module by module (``Linear`` records below), so
the very numbers behind the FLOP formula are also checked against the real parameter counts
of the model (``param_counts``, tests/test_progress.py):

- text decoder, per token: q/k/v/o projections, the MLP - for MoE layers the router plus only
  the ``num_experts_per_tok`` active experts - and lm_head (logits for every position);
  attention adds 4 x heads x head_dim FLOPs per (query, key) pair and layer, over the causal
  pairs of each sample's own length (padding excluded, packed samples separate);
- vision tower, per patch (16x16 pixels x 2 frames): the patch embedding (a Conv3d whose
  stride equals its kernel, i.e. one matmul) and every block's qkv/proj/MLP; attention over
  all patch pairs of each frame (Qwen3-VL attends within a frame, ``get_vision_cu_seqlens``);
- merger and deepstack mergers, per merged token (2x2 patches): two Linears each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

TRAIN_FACTOR = 3  # forward + backward = 3 forwards
PEAK_ENV = "QWEN3VL_PEAK_TFLOPS"  # per-device dense peak override, in TFLOP/s
# Dense (no sparsity) bf16/fp16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s per GPU.
# Checked in order; the first substring of torch.cuda.get_device_name() that matches wins.
PEAK_BF16_TFLOPS = [
    ("H200 NVL", 835.5), ("H200", 989.5),
    ("H100 NVL", 835.5), ("H100 PCIE", 756.5), ("H100", 989.5),  # H100 SXM: "H100 80GB HBM3"
    ("A100", 312.0),
]


@dataclass(frozen=True)
class Linear:
    """A weight matrix used ``active`` times per unit (token, patch, merged token) out of
    ``copies`` stored (experts); ``shared`` weights (tied lm_head) add no parameters."""
    fan_in: int
    fan_out: int
    bias: bool = False
    copies: int = 1
    active: int = 1
    shared: bool = False

    @property
    def params(self) -> int:
        return 0 if self.shared else self.copies * (self.fan_in + self.bias) * self.fan_out

    @property
    def matmul_params(self) -> int:
        return self.active * self.fan_in * self.fan_out


@dataclass(frozen=True)
class Part:
    """One piece of the model: its Linears (per unit of work) and its other parameters
    (embeddings, norms), which cost no matmul FLOPs."""
    linears: tuple[Linear, ...]
    other_params: int = 0

    @property
    def params(self) -> int:
        return sum(x.params for x in self.linears) + self.other_params

    @property
    def matmul_params(self) -> int:
        """Weights multiplied per unit: 2x this is the forward FLOPs per unit."""
        return sum(x.matmul_params for x in self.linears)


def _text(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config.text_config


def is_moe_layer(text, layer: int) -> bool:
    """The rule transformers' Qwen3VLMoeTextDecoderLayer uses to give a layer experts."""
    experts = getattr(text, "num_experts", 0) or 0
    return (experts > 0 and layer not in (getattr(text, "mlp_only_layers", None) or [])
            and (layer + 1) % getattr(text, "decoder_sparse_step", 1) == 0)


def text_parts(config) -> dict[str, Part]:
    """``embed`` (lookup only), ``layers`` (all decoder layers + final norm) and ``lm_head``,
    per text token."""
    t = _text(config)
    h, hd, heads, kv = t.hidden_size, t.head_dim, t.num_attention_heads, t.num_key_value_heads
    bias = bool(getattr(t, "attention_bias", False))
    layers: list[Linear] = []
    norms = h  # final norm
    for i in range(t.num_hidden_layers):
        layers += [Linear(h, heads * hd, bias), Linear(h, kv * hd, bias), Linear(h, kv * hd, bias),
                   Linear(heads * hd, h, bias)]
        norms += 2 * h + 2 * hd  # input/post-attention RMSNorms, q_norm, k_norm
        if is_moe_layer(t, i):
            e, k, inter = t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size
            layers += [Linear(h, e),  # router
                       Linear(h, 2 * inter, copies=e, active=k), Linear(inter, h, copies=e, active=k)]
        else:
            layers += [Linear(h, t.intermediate_size), Linear(h, t.intermediate_size),
                       Linear(t.intermediate_size, h)]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return {
        "embed": Part((), t.vocab_size * h),
        "layers": Part(tuple(layers), norms),
        "lm_head": Part((Linear(h, t.vocab_size, shared=tied),)),
    }


def vision_parts(config) -> dict[str, Part]:
    """``tower`` per patch (patch embedding, position table, blocks) and ``mergers`` per
    merged token (the merger and every deepstack merger)."""
    v = config.vision_config
    hv, inter, out = v.hidden_size, v.intermediate_size, v.out_hidden_size
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    block = [Linear(hv, 3 * hv, True), Linear(hv, hv, True), Linear(hv, inter, True),
             Linear(inter, hv, True)]
    merged = hv * v.spatial_merge_size ** 2
    n_deepstack = len(v.deepstack_visual_indexes)
    merger = [Linear(merged, merged, True), Linear(merged, out, True)]
    return {
        "tower": Part((Linear(patch_in, hv, True), *block * v.depth),
                      v.num_position_embeddings * hv + v.depth * 4 * hv),  # + 2 LayerNorms/block
        # The main merger norms each patch (hv); deepstack mergers norm the merged vector.
        "mergers": Part(tuple(merger * (1 + n_deepstack)), 2 * hv + n_deepstack * 2 * merged),
    }


def param_counts(config) -> dict[str, int]:
    """Parameters by part, from the config alone: text (embeddings, decoder, lm_head unless
    tied), vision (patch embedding, position table, blocks), merger (+ deepstack), total."""
    text, vision = text_parts(config), vision_parts(config)
    counts = {"text": sum(p.params for p in text.values()), "vision": vision["tower"].params,
              "merger": vision["mergers"].params}
    counts["total"] = sum(counts.values())
    return counts


def text_matmul_params_per_token(config) -> int:
    """The N of "6N FLOPs per token" for the text part: decoder weights a token meets (the
    active experts only) plus lm_head."""
    parts = text_parts(config)
    return parts["layers"].matmul_params + parts["lm_head"].matmul_params


def sequence_lengths(batch: dict) -> list[int]:
    """Each sample's own length: packed rows split where text position 0 restarts (row 0 of
    the 4-row MRoPE ``position_ids``); padded rows count their attention mask."""
    mask = batch.get("attention_mask")
    if mask is None and batch.get("position_ids") is not None:
        pos = batch["position_ids"]
        pos = pos[0] if pos.dim() == 3 else pos  # (4, B, L) -> text positions (B, L)
        lengths = []
        for row in pos:
            starts = (row == 0).nonzero().flatten().tolist() + [row.numel()]
            lengths += [b - a for a, b in zip(starts, starts[1:])]
        return lengths
    if mask is not None:
        return [int(n) for n in mask.sum(dim=1).tolist()]
    ids = batch["input_ids"]
    return [ids.shape[-1]] * (ids.shape[0] if ids.dim() > 1 else 1)


def visual_grids(batch: dict) -> list[tuple[int, int, int]]:
    grids = []
    for key in ("image_grid_thw", "video_grid_thw"):
        if batch.get(key) is not None:
            grids += [tuple(int(x) for x in row) for row in batch[key].tolist()]
    return grids


class StepFlops:
    """Model FLOPs of micro-batches of one checkpoint (``config``: the model's config, e.g.
    ``model.config``; a peft-wrapped model's config is the base model's)."""

    def __init__(self, config):
        self.text = _text(config)
        self.vision = config.vision_config
        parts = {**text_parts(config), **vision_parts(config)}
        self.per_token = parts["layers"].matmul_params + parts["lm_head"].matmul_params
        self.per_patch = parts["tower"].matmul_params
        self.per_merged = parts["mergers"].matmul_params
        self.merge_unit = self.vision.spatial_merge_size ** 2

    def text_forward(self, lengths: list[int], causal: bool = True) -> float:
        """Forward FLOPs of the decoder + lm_head over samples of these lengths."""
        t = self.text
        pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lengths)
        attention = 4 * t.num_attention_heads * t.head_dim * t.num_hidden_layers * pairs
        return 2.0 * self.per_token * sum(lengths) + attention

    def vision_forward(self, grids: list[tuple[int, int, int]]) -> float:
        """Forward FLOPs of the vision tower and mergers for images/videos of these (t, h, w)
        patch grids; attention is over the patches of each frame."""
        patches = sum(t * h * w for t, h, w in grids)
        pairs = sum(t * (h * w) ** 2 for t, h, w in grids)
        attention = 4 * self.vision.hidden_size * self.vision.depth * pairs
        return (2.0 * self.per_patch * patches + 2.0 * self.per_merged * (patches // self.merge_unit)
                + attention)

    def forward_flops(self, batch: dict, causal: bool = True) -> float:
        return self.text_forward(sequence_lengths(batch), causal) + self.vision_forward(visual_grids(batch))

    def step_flops(self, batch: dict) -> float:
        """Training FLOPs (forward + backward) of one collated micro-batch. Call it on the CPU
        batch (before ``.to(device)``) so it costs no device sync."""
        return TRAIN_FACTOR * self.forward_flops(batch)


def peak_flops(device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of one device for bf16/fp16 training, or None when unknown (CPU,
    an unlisted GPU, float32 weights). ``QWEN3VL_PEAK_TFLOPS`` overrides it for any device."""
    override = os.environ.get(PEAK_ENV)
    if override:
        try:
            return float(override) * 1e12
        except ValueError:
            raise ValueError(f"{PEAK_ENV}={override!r}: expected the device's peak in TFLOP/s, "
                             f"e.g. {PEAK_ENV}=989.5") from None
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s for a CUDA device name, e.g. "NVIDIA H100 80GB HBM3"."""
    name = device_name.upper()
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def mfu(flops: float, seconds: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation of ``flops`` (summed over all devices) done in ``seconds``."""
    if not peak or seconds <= 0:
        return None
    return flops / (seconds * peak * n_devices)
