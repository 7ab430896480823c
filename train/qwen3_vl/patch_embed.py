"""Qwen3-VL's vision patch embedding as one matmul instead of a Conv3d (``model.patch_embed``).

The patch embedding is a Conv3d whose kernel equals its stride (temporal patch 2 x 16 x 16, 3
channels), applied to patches the processor has already cut and flattened: each "convolution" has
exactly one output position, so it is ``x @ W.reshape(out, -1).T + b`` over the flattened patch.
Conv3d takes a slow path for this shape on recent torch releases (pytorch#166122, #174051:
10-50x slower vision forward on GPU; transformers PR #45041 switches to a Linear), and on CPU we
measured the matmul 3-8x faster at the 8B shape (``scripts/long_bench_model.py``; the spread is
the load of a shared 2-core machine).

Why swap the class of ``patch_embed.proj`` (the Conv3d) and not the patch-embed module's forward
or transformers globally:

- the Conv3d keeps its parameters, names and shapes, so state_dict keys, checkpoints and
  ``save_pretrained`` output are exactly those of the stock model (a checkpoint trained with the
  matmul loads in plain transformers);
- the parent's forward still calls ``self.proj(...)``, so module hooks still fire on the Conv3d:
  DeepSpeed ZeRO-3 gathers its partitioned weight there, and peft wrappers (a LoRA Conv3d layer
  or a ``modules_to_save`` copy) call it as before;
- it is ``isinstance(nn.Conv3d)`` still, and only the instances of the loaded model change.

An input that is not one kernel-sized block per sample (not what Qwen3-VL passes) takes the
ordinary Conv3d path, so the class is never wrong, only sometimes not faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.qwen3_vl.names import PATCH_EMBED

CHOICES = ("auto", "conv3d", "linear")


class PatchConv3dAsLinear(nn.Conv3d):
    """A kernel == stride Conv3d computed as a matmul when each input is exactly one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != tuple(self.kernel_size) or x.shape[1] != self.in_channels:
            return super().forward(x)
        out = F.linear(x.reshape(x.shape[0], -1), self.weight.reshape(self.out_channels, -1),
                       self.bias)
        return out.view(x.shape[0], self.out_channels, 1, 1, 1)


def resolve(choice: str) -> str:
    """``auto`` -> ``linear``: the matmul was faster in every measurement we have (CPU: ours;
    GPU: the upstream reports), and its outputs match (max abs diff ~5e-6 in float32)."""
    if choice not in CHOICES:
        raise ValueError(f"model.patch_embed must be one of {', '.join(CHOICES)}; got {choice!r}")
    return "linear" if choice == "auto" else choice


def _equivalent(conv: nn.Conv3d) -> bool:
    return (tuple(conv.kernel_size) == tuple(conv.stride) and tuple(conv.padding) == (0, 0, 0)
            and tuple(conv.dilation) == (1, 1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def patch_embed_convs(model: nn.Module) -> list[tuple[str, nn.Conv3d]]:
    """The vision patch-embedding Conv3d(s) of ``model``, under any wrapper prefix, and peft's
    ``modules_to_save`` copies of them (``...patch_embed.modules_to_save.default.proj``)."""
    inside = "." + PATCH_EMBED.split(".", 1)[1].rsplit(".", 1)[0] + "."  # .visual.patch_embed.
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv3d) and inside in "." + n]


def set_patch_embed(model: nn.Module, choice: str) -> str:
    """Make ``model``'s patch embedding compute as ``choice`` (auto, conv3d, linear); returns
    what it resolved to. Raises if the model has no Qwen3-VL patch-embedding Conv3d to change."""
    mode = resolve(choice)
    convs = patch_embed_convs(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no '{PATCH_EMBED}' Conv3d; "
                         f"model.patch_embed applies to Qwen3-VL checkpoints only")
    for name, conv in convs:
        if mode == "linear":
            if not _equivalent(conv):
                raise ValueError(f"{name} is not a kernel == stride Conv3d without padding; "
                                 f"set model.patch_embed=conv3d")
            conv.__class__ = PatchConv3dAsLinear
        elif type(conv) is PatchConv3dAsLinear:
            conv.__class__ = nn.Conv3d
    return mode
