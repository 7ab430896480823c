"""The synthetic corpus: deterministic, and its grounding answers match the drawn pixels."""

from __future__ import annotations

import json

import numpy as np
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
