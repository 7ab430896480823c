"""Synthetic encoded examples (text, an image, a video) for the tiny models, built straight from
the model config: no processor, no media files. Random labels with -100 holes; the layouts are
what data/encode.py produces (vision_start, pad tokens, vision_end; a video's frames each after
a short text timestamp), so padded batches (``collate``) and packed rows (``collate_packed``)
come out as in training."""

from __future__ import annotations

import torch

from data.encode import collate
from data.packing import collate_packed

MERGE = 2


def _visual(config, grid: list[int]) -> torch.Tensor:
    vision = config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    t, h, w = grid
    return torch.randn(t * h * w, patch_dim)


def example(config, g: torch.Generator, text: int, image: list[int] | None = None,
            video: list[int] | None = None, vocab: int = 200, tail: int = 0) -> dict:
    """One encoded sample: ``text`` random tokens before the optional image / video and
    ``text + tail`` after."""
    ids, types = [], []

    def words(n):
        ids.extend(torch.randint(0, vocab, (n,), generator=g).tolist())
        types.extend([0] * n)

    def block(token, kind, n):
        ids.append(config.vision_start_token_id)
        types.append(0)
        ids.extend([token] * n)
        types.extend([kind] * n)
        ids.append(config.vision_end_token_id)
        types.append(0)

    words(text)
    out = {}
    if image is not None:
        block(config.image_token_id, 1, image[0] * image[1] * image[2] // MERGE ** 2)
        out["pixel_values"] = _visual(config, image)
        out["image_grid_thw"] = torch.tensor([image])
    if video is not None:
        t, h, w = video
        for _ in range(t):
            words(3)  # the frame's timestamp text
            block(config.video_token_id, 2, h * w // MERGE ** 2)
        out["pixel_values_videos"] = _visual(config, video)
        out["video_grid_thw"] = torch.tensor([video])
    words(text + tail)
    input_ids = torch.tensor(ids)
    labels = input_ids.clone()
    labels[torch.tensor(types) != 0] = -100
    labels[torch.rand(len(ids), generator=g) < 0.3] = -100  # holes
    labels[: text // 2] = -100  # a prompt
    out.update(input_ids=input_ids, labels=labels, mm_token_type_ids=torch.tensor(types),
               attention_mask=torch.ones(len(ids), dtype=torch.long))
    return out


def examples(config, seed: int = 0) -> list[dict]:
    """An image sample, a video sample (2 temporal patches) and a text-only one; odd lengths,
    so a split over 2 ranks needs padding."""
    g = torch.Generator().manual_seed(seed)
    return [example(config, g, 9, image=[1, 4, 6]),
            example(config, g, 7, video=[2, 4, 4], tail=1),
            example(config, g, 11)]


def padded_batch(config, seed: int = 0, pad_token_id: int = 0) -> dict:
    return collate(examples(config, seed), pad_token_id, padding_side="right")


def packed_batch(config, seed: int = 0) -> dict:
    rows = examples(config, seed)
    for e in rows:
        e.pop("attention_mask")
    return collate_packed(rows, MERGE)


def single_batch(config, seed: int = 0) -> dict:
    """One unpacked sample with a video, no padding inside the row: plain causal attention."""
    return collate(examples(config, seed)[1:2], 0, padding_side="right")


def image_batch(config, seed: int = 0) -> dict:
    """One sample with one still image: a single frame, so one SP rank encodes it alone."""
    return collate(examples(config, seed)[:1], 0, padding_side="right")


def label_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())
