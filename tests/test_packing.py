"""Packing: per-sample MRoPE positions, and a packed row trains exactly like the same samples
padded side by side (loss and every gradient), for the tiny dense and MoE models."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForImageTextToText

from data.encode import SampleEncoder, VisionBudget, collate
from data.packing import collate_packed, pack_rows
from data.positions import mrope_positions
from data.sources import load_llava_json
from tests.helpers.files import write_json

MERGE = 2


def _load(path):
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32,
                                                       attn_implementation="sdpa")


def _random_layout(rng: random.Random):
    """Token types and grids for a random mix of text runs, images and videos."""
    types, images, videos = [], [], []
    for _ in range(rng.randint(1, 5)):
        types += [0] * rng.randint(1, 7)
        kind = rng.choice(["image", "video", "text"])
        if kind == "image":
            h, w = 2 * rng.randint(1, 6), 2 * rng.randint(1, 6)
            images.append([1, h, w])
            types += [1] * (h * w // 4)
        elif kind == "video":
            t, h, w = rng.randint(1, 3), 2 * rng.randint(1, 4), 2 * rng.randint(1, 4)
            videos.append([t, h, w])
            for _ in range(t):  # frames are separated by their text timestamps
                types += [0] * rng.randint(2, 5) + [2] * (h * w // 4)
    types += [0] * rng.randint(0, 3)
    as_grid = lambda g: torch.tensor(g, dtype=torch.long) if g else None  # noqa: E731
    return torch.tensor(types), as_grid(images), as_grid(videos)


def test_positions_equal_the_models_get_rope_index(tiny):
    model = _load(tiny["dense"])
    rng = random.Random(0)
    for case in range(200):
        types, image_grid, video_grid = _random_layout(rng)
        ids = torch.zeros(1, len(types), dtype=torch.long)
        expected, _ = model.model.get_rope_index(ids, types[None], image_grid,
                                                 None if video_grid is None else video_grid.clone())
        got = mrope_positions(types, image_grid, video_grid, MERGE)
        assert torch.equal(got, expected[:, 0]), f"case {case}"


def test_pack_rows_fills_rows_and_keeps_every_sample_once():
    rng = random.Random(1)
    lengths = [rng.randint(20, 900) for _ in range(500)]
    order = list(range(500))
    rng.shuffle(order)
    rows = pack_rows(order, lengths, capacity=2048, window=128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 2048 for row in rows)
    fill = sum(lengths) / (len(rows) * 2048)
    assert fill > 0.95, fill
    with pytest.raises(ValueError, match="sample 0 has 3000 tokens"):
        pack_rows([0], [3000], capacity=2048)


def _mixed_examples(processor, corpus, tmp_path):
    """Single-image, two-image and text-only samples of different lengths."""
    samples = load_llava_json(corpus["train"])[:3]
    two = {"id": "two", "image": [str(samples[0].images[0]), str(samples[1].images[0])],
           "conversations": [{"from": "human", "value": "<image>\nand\n<image>\nSame colour?"},
                             {"from": "gpt", "value": "no, they differ"}]}
    text = {"id": "text", "conversations": [{"from": "human", "value": "Say hello."},
                                            {"from": "gpt", "value": "hello there"}]}
    samples += load_llava_json(write_json(tmp_path / "mixed.json", [two, text]))
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 256 * 256))
    return [enc.encode(s) for s in samples]


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_packed_row_equals_unpacked_batch(kind, tiny, processor, corpus, tmp_path):
    examples = _mixed_examples(processor, corpus, tmp_path)
    model = _load(tiny[kind])
    model.train()
    n_items = torch.tensor(sum(int((e["labels"][1:] != -100).sum()) for e in examples))

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss = model(**batch, num_items_in_batch=n_items, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    unpacked = collate(examples, processor.tokenizer.pad_token_id, padding_side="right")
    packed = collate_packed(examples, MERGE)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    assert "attention_mask" not in packed
    loss_u, grads_u = loss_and_grads(unpacked)
    loss_p, grads_p = loss_and_grads(packed)
    # float32 on CPU: the two layouts sum the same terms in a different order.
    assert abs(loss_u.item() - loss_p.item()) < 1e-5, (loss_u, loss_p)
    assert grads_u.keys() == grads_p.keys()
    vision = [n for n in grads_u if ".visual." in n]
    assert vision and any("deepstack" in n for n in vision)  # the image path was exercised
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_packing_without_position_restart_would_leak_across_samples(tiny, processor, corpus, tmp_path):
    """The check above can fail: positions that do not restart per sample (a plain arange over
    the row, what a naive packer passes) change the loss."""
    examples = _mixed_examples(processor, corpus, tmp_path)[:2]
    model = _load(tiny["dense"])
    packed = collate_packed(examples, MERGE)
    naive = dict(packed)
    naive["position_ids"] = packed["position_ids"].clone()
    naive["position_ids"][0, 0] = torch.arange(packed["input_ids"].shape[1])
    with torch.no_grad():
        good = model(**packed, use_cache=False).loss
        bad = model(**naive, use_cache=False).loss
    assert abs(good.item() - bad.item()) > 1e-4
