"""The synthetic corpus: deterministic, and its grounding answers match the drawn pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data.boxes import box_from_relative, iou
from data.tools.synthetic import generate


def test_generation_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", 3, 2, seed=7)
    b = generate(tmp_path / "b", 3, 2, seed=7)
    assert a["train"].read_text() == b["train"].read_text()
    assert (tmp_path / "a/images/train/train-vqa-00002.png").read_bytes() == \
        (tmp_path / "b/images/train/train-vqa-00002.png").read_bytes()


def test_grounding_boxes_match_drawn_object(corpus):
    root = corpus["eval"].parent
    records = [r for r in json.loads(corpus["eval"].read_text()) if r["task"] == "grounding"]
    assert records
    for r in records:
        image = np.asarray(Image.open(root / r["image"]).convert("RGB"))
        ys, xs = np.nonzero((image < 250).any(axis=2))
        drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        answer = json.loads(r["conversations"][1]["value"])
        box = box_from_relative(answer[0]["bbox_2d"], image.shape[1], image.shape[0])
        assert iou(box, drawn) > 0.8, (r["id"], box, drawn)


def test_every_task_present_in_both_splits(corpus):
    for split in ("train", "eval"):
        tasks = {r["task"] for r in json.loads(corpus[split].read_text())}
        assert tasks == {"vqa", "grounding", "doc"}


def test_distractor_grounding_boxes_the_named_shape_among_two(tmp_path):
    """``data synth --tasks grounding_distractor`` (the RL demo's prompts): two shapes of
    different kinds; the answer boxes the one the question names."""
    from data.tools.synthetic import SHAPES

    paths = generate(tmp_path, 0, 12, seed=3, tasks=["grounding_distractor"])
    records = json.loads(paths["eval"].read_text())
    assert len(records) == 12 and {r["task"] for r in records} == {"grounding_distractor"}
    for r in records:
        image = np.asarray(Image.open(tmp_path / r["image"]).convert("RGB"))
        question, answer = r["conversations"][0]["value"], json.loads(r["conversations"][1]["value"])
        named = [s for s in SHAPES if f"Locate the {s} " in question]
        assert named == [answer[0]["label"]]
        x1, y1, x2, y2 = (round(v) for v in box_from_relative(answer[0]["bbox_2d"], 96, 96))
        inside = (image[y1:y2, x1:x2] < 250).any(axis=2).sum()
        assert 0.3 * inside < (image < 250).any(axis=2).sum() - inside  # another shape outside
    with pytest.raises(ValueError, match="unknown synthetic task"):
        generate(tmp_path / "bad", 1, 1, tasks=["grounding", "typo"])
