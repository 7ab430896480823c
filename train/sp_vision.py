"""The vision tower's work divided over a sequence-parallel group instead of repeated on each
rank (train/sequence_parallel.py splits the language model).

Every rank of the group holds the same sample. Qwen3-VL's vision tower attends within one
temporal patch (frame) of an image or video at a time: its windows (``cu_seqlens``), rotary
positions and interpolated position embeddings depend only on (h, w), and the mergers act on
2x2 patches of one frame. So a grid ``[t, h, w]`` gives exactly the features of ``t`` grids
``[1, h, w]`` run one after another. A pre-hook on the tower hands each rank a contiguous run
of frames (balanced by patch count); a post-hook all-gathers the merged features and every
deepstack level, so every rank again has the whole sample's features, in the original order,
to place its own sequence slice.

Backward: each rank's features get the sum, over the group, of the gradients of their rows
(all-reduce, then its own rows), so the vision weights of each rank receive the gradient of
its frames from the whole sample's loss, and the group's gradients sum to the unsplit one.

A rank left without a frame (fewer frames than ranks: one still image over 2 ranks) runs the
tower on a blank 2x2-patch frame and ties it into the graph with weight zero: ZeRO-3 gathers
weights collectively and DDP reduces every parameter's gradient, so all ranks run the tower.
A single image is therefore not split below one frame.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def frame_owners(patches: list[int], size: int) -> list[int]:
    """Which rank runs each frame: contiguous runs, balanced by patch count (a frame goes to
    the rank whose share of the patches it starts in)."""
    total = sum(patches)
    owners, before = [], 0
    for p in patches:
        owners.append(min(size - 1, before * size // total))
        before += p
    return owners


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (counts[r] of them) in rank order. Backward: the grad of
    this rank's rows, summed over the group."""

    @staticmethod
    def forward(ctx, local, counts, rank, group):
        ctx.counts, ctx.rank, ctx.group = counts, rank, group
        most = max(counts)
        padded = F.pad(local, (0, 0, 0, most - local.shape[0])).contiguous()
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None, None, None


class VisionSplit:
    """The hooks on ``visual`` (a Qwen3VLVisionModel) for ``sp`` (train.sequence_parallel.SPGroup)."""

    def __init__(self, visual: torch.nn.Module, sp):
        self.visual, self.sp = visual, sp
        self.merge = visual.spatial_merge_size
        self.counts: list[int] = []
        self.blank = False
        visual.register_forward_pre_hook(self._split, with_kwargs=True)
        visual.register_forward_hook(self._gather)

    def _split(self, module, args, kwargs):
        pixels = args[0] if args else kwargs.pop("hidden_states")
        grid = kwargs["grid_thw"]
        frames = []  # (first pixel row, rows, h, w)
        row = 0
        for t, h, w in grid.tolist():
            for _ in range(t):
                frames.append((row, h * w, h, w))
                row += h * w
        owners = frame_owners([f[1] for f in frames], self.sp.size)
        mine = [f for f, owner in zip(frames, owners) if owner == self.sp.rank]
        m2 = self.merge ** 2
        self.counts = [sum(f[1] for f, o in zip(frames, owners) if o == r) // m2
                       for r in range(self.sp.size)]
        self.blank = not mine
        if self.blank:
            m = self.merge
            mine_pixels = pixels.new_zeros(m * m, pixels.shape[-1])
            mine_grid = torch.tensor([[1, m, m]], device=grid.device, dtype=grid.dtype)
        else:
            mine_pixels = torch.cat([pixels[start:start + n] for start, n, _, _ in mine])
            mine_grid = torch.tensor([[1, h, w] for _, _, h, w in mine], device=grid.device,
                                     dtype=grid.dtype)
        kwargs["grid_thw"] = mine_grid
        return (mine_pixels,), kwargs

    def _gather(self, module, args, output):
        def gather(local):
            if self.blank:  # no rows of ours; the blank frame's weights still get a (zero) grad
                local = local[:0] + 0.0 * local.sum()
            return _GatherRows.apply(local, self.counts, self.sp.rank, self.sp.group)

        output.pooler_output = gather(output.pooler_output)
        output.deepstack_features = [gather(f) for f in output.deepstack_features]
        # last_hidden_state (per-patch states before merging) stays this rank's frames only:
        # Qwen3VLModel reads only the merged and deepstack features.
        return output
