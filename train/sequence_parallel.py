"""Ulysses sequence parallelism for Qwen3-VL (``distributed.sequence_parallel: N``).

The N ranks of a sequence-parallel (SP) group hold the same micro-batch. Each rank embeds the
whole sample and encodes its share of the image / video frames (the features are then
all-gathered), then runs the language model over its 1/N slice of the merged text+visual
sequence; in every attention layer an all-to-all trades the sequence split for a head split
(each rank attends over the full sequence with H/N heads), and a second all-to-all trades it
back.

Attention runs in torch's sdpa: a plain causal row (one unpacked sample without padding
inside it) needs no mask; packed rows and padded batches use a (B, 1, T, T) boolean mask over
the full sequence (O(T^2) bytes per rank: 1 GiB at 32k tokens). flash-attention varlen under
SP is not wired yet (the config refuses it).

Why not DeepSpeed's ``UlyssesSPAttentionHF`` (0.19.8): its data-loader adapter slices
``input_ids`` / ``position_ids`` before the model runs, so the image and video placeholders
of a slice no longer match the vision features (transformers raises "Image features and image
tokens do not match"); it gathers ``position_ids`` along dim 1, which is the batch dim of
Qwen3-VL's (3 or 4, B, T) MRoPE ids; it has no notion of the deepstack features; and it
masks from position ids alone (no padding mask). Here the split happens after the visual merge:

- a forward pre-hook on the text model (``model.model.language_model``) pads the sequence
  to a multiple of N and hands it this rank's slice of ``inputs_embeds``, the 3D/4D
  ``position_ids`` (rotary embeddings are computed from the local slice: exactly the
  positions its tokens have), the padding mask, ``visual_pos_masks``, and the rows of each
  ``deepstack_visual_embeds`` that belong to the slice's visual tokens;
- the hook also builds the full-sequence attention mask once per forward with transformers'
  rules (causal; packed rows split where the text position ids restart, when no padding mask
  is given; padding keys masked), since each rank attends over the full sequence;
- the attention kernel is registered in transformers' ``AttentionInterface`` as
  ``ulysses_sdpa`` and selected for the text model only (the vision tower keeps sdpa);
- the loss (train/loss.py) shifts the labels over the whole row, pads them like the
  sequence and sums over this rank's slice.

The vision tower's frames are divided over the group and its features all-gathered
(train/sp_vision.py), so each frame is encoded once per group; a single still image (one
frame) is encoded by one rank while the others run a blank frame. Every rank then needs all
visual features to place its slice. Gradients stay exact: each rank's backward reaches the
embedding and (through the gather) the vision features only through its own slice, so the
group's gradients sum to the unsplit ones.

MoE: experts see each rank's tokens as they would any batch's, so expert parallelism
(DeepSpeed AutoEP) combines with the split unchanged. The router losses of train/moe.py are
computed per rank over its slice (a slice-level balance loss, as they are per micro-batch
already); the LM loss and its gradients are exactly those of the unsplit run.

Normalisation: each rank's loss is its slice's label sum / ``num_items_in_batch`` (the global
label count over the world size, each sample counted once); DDP / ZeRO average gradients
over all ranks, so the step's gradient is the gradient of the global mean, as without SP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

ATTENTION = "ulysses_sdpa"
IGNORE_INDEX = -100


@dataclass
class SPGroup:
    group: object  # torch.distributed ProcessGroup
    rank: int  # within the group
    size: int


def new_sp_group(size: int, rank: int, world_size: int) -> SPGroup:
    """Consecutive ranks form a group: [0..N-1], [N..2N-1], ... Every rank must call this."""
    if world_size % size:
        raise ValueError(f"distributed.sequence_parallel={size} must divide the number of "
                         f"processes ({world_size}): launch a multiple of {size} processes or "
                         f"change distributed.sequence_parallel")
    mine = None
    for start in range(0, world_size, size):
        ranks = list(range(start, start + size))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return SPGroup(mine, rank % size, size)


class _AllToAll(torch.autograd.Function):
    """Block i of dim 0 goes to rank i; the result's block i came from rank i. With equal
    blocks this exchange is its own adjoint, so the backward pass is the same exchange."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()  # before empty_like, which would copy a view's strides
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def seq_to_heads(x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
    """(B, H, T/N, D) of this rank's tokens -> (B, H/N, T, D): this rank's heads, all tokens."""
    b, h, t, d = x.shape
    n = sp.size
    x = x.reshape(b, n, h // n, t, d).transpose(0, 1)  # (head group, B, H/N, T/N, D)
    x = _AllToAll.apply(x, sp.group)  # (source rank = sequence slice, B, H/N, T/N, D)
    return x.permute(1, 2, 0, 3, 4).reshape(b, h // n, n * t, d)


def heads_to_seq(x: torch.Tensor, sp: SPGroup) -> torch.Tensor:
    """(B, H/N, T, D) -> (B, H, T/N, D): the inverse of ``seq_to_heads``."""
    b, hn, t, d = x.shape
    n = sp.size
    x = x.reshape(b, hn, n, t // n, d).permute(2, 0, 1, 3, 4)  # (sequence slice, B, H/N, T/N, D)
    x = _AllToAll.apply(x, sp.group)  # (source rank = head group, B, H/N, T/N, D)
    return x.transpose(0, 1).reshape(b, n * hn, t // n, d)


def ulysses_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0,
                 scaling: float | None = None, **kwargs):
    """transformers' attention-interface signature; q (B, H, T/N, D), k/v (B, Hkv, T/N, D) ->
    (B, T/N, H, D). ``attention_mask`` (built by transformers for the local slice) is ignored:
    the shard's full-sequence mask applies."""
    shard: SequenceShard = module.sp_shard
    sp = shard.sp
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads % sp.size:  # too few kv heads to split: give every query head its own copy
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    q, k, v = (seq_to_heads(t, sp) for t in (query, key, value))
    if k.shape[1] != q.shape[1]:  # grouped-query attention, as transformers' repeat_kv
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    mask = shard.mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                         dropout_p=dropout if module.training else 0.0,
                                         scale=scaling)
    return heads_to_seq(out, sp).transpose(1, 2).contiguous(), None


def _no_local_mask(*args, **kwargs):
    return None  # the local slice's mask is never used: ulysses_sdpa has the full one


def full_attention_mask(text_positions: torch.Tensor | None, padding: torch.Tensor | None,
                        batch: int, length: int, pad: int, device) -> torch.Tensor | None:
    """(B, 1, T+pad, T+pad) bool mask over the whole padded sequence, by transformers' rules
    (``create_causal_mask``): causal; with no padding mask, packed samples (text positions
    restarting) see only themselves; padding keys masked. Every query sees at least itself,
    so padding rows stay finite. None: plain causal, which sdpa runs without materialising
    any (T, T) tensor - one unpacked sequence with no padding inside it (the SP pad sits at
    the end, after every real token, so causality alone keeps it out of their view)."""
    from transformers.masking_utils import find_packed_sequence_indices

    segments = None
    if padding is None and text_positions is not None:
        segments = find_packed_sequence_indices(text_positions)
    if padding is not None and bool(padding.bool().all()):
        padding = None  # all real tokens: as transformers, plain causal
    if padding is None and segments is None:
        return None
    total = length + pad
    index = torch.arange(total, device=device)
    allowed = (index[None, :] <= index[:, None]).expand(batch, total, total)
    if segments is not None:
        segments = F.pad(segments, (0, pad), value=-1)
        allowed = allowed & (segments[:, :, None] == segments[:, None, :])
    valid = padding.bool() if padding is not None else torch.ones(batch, length, dtype=torch.bool,
                                                                   device=device)
    valid = F.pad(valid, (0, pad), value=False)
    allowed = (allowed & valid[:, None, :]) | torch.eye(total, dtype=torch.bool, device=device)
    return allowed[:, None]


class SequenceShard:
    """This rank's slice of the current forward's sequence (see the module docstring)."""

    def __init__(self, sp: SPGroup):
        self.sp = sp
        self.mask: torch.Tensor | None = None
        self.length = self.pad = 0
        self.local = slice(0)
        self.handle = None

    @classmethod
    def install(cls, model, sp: SPGroup) -> SequenceShard:
        """Split the text model of ``model`` (a transformers Qwen3-VL model, or peft around
        one) over ``sp``; before DDP / DeepSpeed wrap it."""
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        from train.loss import hf_model

        hf = hf_model(model)
        text_config = hf.config.text_config
        heads = text_config.num_attention_heads
        if heads % sp.size:
            raise ValueError(f"distributed.sequence_parallel={sp.size} must divide the model's "
                             f"{heads} attention heads: choose a divisor of {heads}")
        if text_config._attn_implementation not in ("sdpa", ATTENTION):
            raise ValueError(f"distributed.sequence_parallel needs model.attn_implementation=sdpa "
                             f"(got {text_config._attn_implementation})")
        AttentionInterface.register(ATTENTION, ulysses_sdpa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, _no_local_mask)
        shard = cls(sp)
        text = hf.model.language_model
        for layer in text.layers:
            layer.self_attn.sp_shard = shard  # a plain attribute: not in the state dict
        text.config._attn_implementation = ATTENTION
        shard.handle = text.register_forward_pre_hook(shard._split, with_kwargs=True)
        from train.sp_vision import VisionSplit

        shard.vision = VisionSplit(hf.model.visual, sp)
        return shard

    def _split(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or args:
            raise RuntimeError("sequence parallelism expects the text model to be called with "
                               "inputs_embeds as a keyword (as Qwen3VLModel does)")
        b, t = embeds.shape[:2]
        n, r = self.sp.size, self.sp.rank
        pad = (-t) % n
        local = (t + pad) // n
        self.length, self.pad, self.local = t, pad, slice(r * local, (r + 1) * local)
        positions = kwargs.get("position_ids")
        if positions is None:  # as the text model would make them
            positions = torch.arange(t, device=embeds.device).view(1, 1, -1).expand(4, b, -1)
        elif positions.ndim == 2:
            positions = positions[None].expand(4, -1, -1)
        padding = kwargs.get("attention_mask")
        if padding is not None and padding.ndim != 2:
            raise ValueError("sequence parallelism needs a 2-D padding attention_mask or none")
        text_positions = positions[0] if positions.shape[0] == 4 else None
        self.mask = full_attention_mask(text_positions, padding, b, t, pad, embeds.device)
        kwargs["inputs_embeds"] = F.pad(embeds, (0, 0, 0, pad))[:, self.local]
        kwargs["position_ids"] = F.pad(positions, (0, pad))[..., self.local]
        if padding is not None or pad:
            if padding is None:
                padding = torch.ones(b, t, dtype=torch.long, device=embeds.device)
            kwargs["attention_mask"] = F.pad(padding, (0, pad))[:, self.local]
        visual = kwargs.get("visual_pos_masks")
        if visual is not None:
            visual = F.pad(visual, (0, pad), value=False)
            row = (visual.reshape(-1).cumsum(0) - 1).reshape(visual.shape)  # feature row of each
            mine = visual[:, self.local]
            rows = row[:, self.local][mine]
            kwargs["visual_pos_masks"] = mine
            deepstack = kwargs.get("deepstack_visual_embeds")
            if deepstack is not None:
                kwargs["deepstack_visual_embeds"] = [features[rows] for features in deepstack]
        return args, kwargs

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """This rank's slice of already-shifted (B, T) targets, padded like the sequence."""
        if targets.shape[-1] != self.length:
            raise RuntimeError(f"labels have {targets.shape[-1]} positions, the sequence this "
                               f"forward split had {self.length}")
        return F.pad(targets, (0, self.pad), value=IGNORE_INDEX)[:, self.local]

    def all_reduce(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the SP group (no gradient)."""
        value = value.detach().clone()
        dist.all_reduce(value, group=self.sp.group)
        return value
