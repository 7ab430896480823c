"""The vision tower run once per distinct image of a DPO micro-batch.

A preference pair's chosen and rejected sequences share their prompt, so they carry the same
images (and videos): collated, each one is in ``pixel_values`` twice, once per side, and the
tower would encode it twice. While a ``SharedVision`` is ``on()`` (DpoStep's policy and
reference forwards), a pre-hook on the tower keeps the first copy of each distinct image or
video (same grid, pixels equal exactly) and a post-hook puts the merged and deepstack features
back in the original order with ``index_select``. Every copy's features are then the one
encoding's, and in backward the copies' gradients add up into it: the loss and gradients are
those of encoding each copy, for half the tower's work.

Qwen3VLModel reads only the merged (``pooler_output``) and deepstack features of the tower's
output; ``last_hidden_state`` (per patch, before merging) is left with the distinct ones only.
Not combined with sequence parallelism, whose own hooks split the tower's frames over ranks
(train/sp_vision.py).
"""

from __future__ import annotations

import contextlib

import torch


def distinct_entries(pixels: torch.Tensor, grid: torch.Tensor,
                     ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(for each grid entry, the index of the first entry equal to it; the distinct entries'
    indices, in order; each entry's (first pixel row, rows)). Entries are equal when their
    ``[t, h, w]`` and pixel rows are."""
    starts, first, distinct = [], [], []
    by_shape: dict[tuple, list[int]] = {}
    row = 0
    for k, (t, h, w) in enumerate(grid.tolist()):
        starts.append((row, t * h * w))
        row += t * h * w
        match = None
        for j in by_shape.get((t, h, w), []):
            a, n = starts[j]
            if torch.equal(pixels[a:a + n], pixels[row - n:row]):
                match = j
                break
        if match is None:
            by_shape.setdefault((t, h, w), []).append(k)
            distinct.append(k)
            match = k
        first.append(match)
    return first, distinct, starts


class SharedVision:
    """The hooks on ``visual`` (a Qwen3VLVisionModel); inactive outside ``on()``."""

    def __init__(self, visual: torch.nn.Module):
        self.merge = visual.spatial_merge_size
        self.active = False
        self.rows: torch.Tensor | None = None
        self.encoded = self.requested = 0  # merged rows, for tests and benchmarks
        visual.register_forward_pre_hook(self._keep_distinct, with_kwargs=True)
        visual.register_forward_hook(self._restore_order)

    @contextlib.contextmanager
    def on(self):
        self.active = True
        try:
            yield self
        finally:
            self.active, self.rows = False, None

    def _keep_distinct(self, module, args, kwargs):
        self.rows = None
        if not self.active:
            return None
        pixels = args[0] if args else kwargs["hidden_states"]
        grid = kwargs["grid_thw"]
        first, distinct, rows = distinct_entries(pixels, grid)
        merged = (grid.prod(-1) // self.merge ** 2).tolist()
        self.requested += sum(merged)
        self.encoded += sum(merged[k] for k in distinct)
        if len(distinct) == len(first):
            return None  # nothing repeats
        kept = torch.cat([pixels[rows[k][0]:rows[k][0] + rows[k][1]] for k in distinct])
        offset, out_start = 0, {}
        for k in distinct:  # where each distinct entry's merged rows land in the output
            out_start[k] = offset
            offset += merged[k]
        self.rows = torch.cat([torch.arange(out_start[j], out_start[j] + merged[j])
                               for j in first]).to(pixels.device)
        kwargs["grid_thw"] = grid[distinct]
        if args:
            return (kept, *args[1:]), kwargs
        kwargs["hidden_states"] = kept
        return args, kwargs

    def _restore_order(self, module, args, output):
        if self.rows is None:
            return output
        rows, self.rows = self.rows, None
        output.pooler_output = output.pooler_output.index_select(0, rows)
        output.deepstack_features = [f.index_select(0, rows) for f in output.deepstack_features]
        return output
