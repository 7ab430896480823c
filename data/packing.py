"""Packing: several encoded samples in one row, each attending only to itself.

A packed row carries no padding and no attention mask. Its ``position_ids`` have four rows:
row 0 restarts at 0 for every sample (transformers reads it to build the block-diagonal mask
for sdpa/eager, and the ``cu_seqlens`` of flash-attention varlen), rows 1-3 are each sample's
own 3D MRoPE positions (``data.positions``). Visual inputs are concatenated in token order,
so image features and deepstack features land on the same tokens as unpacked. The first label
of every sample is ignored so no sample learns to predict the next sample's first token.
"""

from __future__ import annotations

import torch

from data.encode import IGNORE_INDEX, concat_visuals
from data.positions import mrope_positions

def pack_rows(order: list[int], lengths: list[int], capacity: int, window: int = 2048) -> list[list[int]]:
    """Group sample indices into rows of at most ``capacity`` tokens.

    First-fit decreasing inside consecutive windows of ``order``: rows stay close to the given
    (shuffled) order, which keeps a mixture's proportions local, while filling rows tightly.
    """
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        free: list[int] = []
        chunk_rows: list[list[int]] = []
        for i in chunk:
            if lengths[i] > capacity:
                raise ValueError(f"sample {i} has {lengths[i]} tokens > pack capacity {capacity}")
            slot = next((r for r, space in enumerate(free) if space >= lengths[i]), None)
            if slot is None:
                chunk_rows.append([i])
                free.append(capacity - lengths[i])
            else:
                chunk_rows[slot].append(i)
                free[slot] -= lengths[i]
        rows += chunk_rows
    return rows


def collate_packed(examples: list[dict], merge_size: int) -> dict:
    """One packed row (batch dimension 1) from encoded examples, in the given order."""
    ids, labels, types, text_pos, rope_pos = [], [], [], [], []
    for e in examples:
        n = len(e["input_ids"])
        ids.append(e["input_ids"])
        sample_labels = e["labels"].clone()
        sample_labels[0] = IGNORE_INDEX
        labels.append(sample_labels)
        types.append(e["mm_token_type_ids"])
        text_pos.append(torch.arange(n))
        rope_pos.append(mrope_positions(e["mm_token_type_ids"], e.get("image_grid_thw"),
                                        e.get("video_grid_thw"), merge_size))
    batch = {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "mm_token_type_ids": torch.cat(types)[None],
        "position_ids": torch.cat([torch.cat(text_pos)[None], torch.cat(rope_pos, dim=1)])[:, None],
    }
    batch.update(concat_visuals(examples))
    return batch
