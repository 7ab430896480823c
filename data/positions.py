"""Qwen3-VL's 3D (temporal, height, width) rotary positions of one encoded sample.

The model computes these itself in ``get_rope_index`` for a padded batch. A packed row holds
several samples, each of which must get the positions it would have alone (starting at 0), so
the packer computes them per sample here, with the same rule (tested equal to the model's):

- text tokens advance all three axes together by one per token;
- an image (or one temporal step of a video: Qwen3-VL separates frames by text timestamps)
  gets t = start, h = start + row, w = start + column over its merged token grid, and the
  next token starts at ``start + max(rows, columns)``.
"""

from __future__ import annotations

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def mrope_positions(mm_token_type_ids: torch.Tensor, image_grid_thw: torch.Tensor | None,
                    video_grid_thw: torch.Tensor | None, merge_size: int) -> torch.Tensor:
    """(3, L) positions for one sample's token types (0 text, 1 image, 2 video)."""
    types = mm_token_type_ids.tolist()
    grids = {IMAGE: iter(_grids(image_grid_thw)), VIDEO: iter(_frame_grids(video_grid_thw))}
    pieces, start, i = [], 0, 0
    while i < len(types):
        kind, j = types[i], i
        while j < len(types) and types[j] == kind:
            j += 1
        if kind == TEXT:
            pieces.append(torch.arange(start, start + j - i).expand(3, -1))
            start += j - i
        else:
            h, w = next(grids[kind])
            rows, cols = h // merge_size, w // merge_size
            if rows * cols != j - i:
                raise ValueError(f"{j - i} visual tokens at {i} but the grid gives {rows}x{cols}")
            hh = torch.arange(rows).repeat_interleave(cols)
            ww = torch.arange(cols).repeat(rows)
            pieces.append(torch.stack([torch.zeros_like(hh), hh, ww]) + start)
            start += max(rows, cols)
        i = j
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long)
    return torch.cat(pieces, dim=1)


def _grids(grid_thw) -> list[tuple[int, int]]:
    return [] if grid_thw is None else [(int(h), int(w)) for _, h, w in grid_thw.tolist()]


def _frame_grids(grid_thw) -> list[tuple[int, int]]:
    """One (h, w) per temporal step: each step is its own token run between timestamps."""
    return [] if grid_thw is None else [(int(h), int(w)) for t, h, w in grid_thw.tolist()
                                        for _ in range(int(t))]
