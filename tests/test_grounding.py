"""Grounding corpora (COCO, RefCOCO, ScreenSpot) -> Qwen3-VL JSON answers in relative [0, 1000)
coordinates that still point at the object after the budget's resize; data.boxes round trips."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from datasets import Dataset, Features, Image as HFImage, List, Value
from PIL import Image, ImageDraw

from data import boxes as B
from data.config import SourceConfig
from data.encode import SampleEncoder, VisionBudget
from data.planner import TokenPlanner, processor_grid
from data.samples import BadSampleLog, DataError
from data.sources import load

BUDGET = VisionBudget(64 * 64, 256 * 256)


def labels_text(processor, encoded) -> str:
    return processor.tokenizer.decode(encoded["labels"][encoded["labels"] != -100])


# --- data.boxes ------------------------------------------------------------------------------


def test_pixel_relative_round_trips_within_a_pixel():
    rng = random.Random(0)
    for _ in range(2000):
        width, height = rng.randint(16, 2000), rng.randint(16, 2000)
        x1, x2 = sorted(rng.uniform(0, width * 0.999) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, height * 0.999) for _ in range(2))
        back = B.box_from_relative(B.box_to_relative([x1, y1, x2, y2], width, height), width, height)
        assert max(abs(a - b) for a, b in zip(back, [x1, y1, x2, y2])) <= 1.0
        point = B.point_from_relative(B.point_to_relative([x1, y2], width, height), width, height)
        assert abs(point[0] - x1) <= 1.0 and abs(point[1] - y2) <= 1.0
    # The far edge clamps to 999: off by one step (size / 1000), still within a pixel here.
    assert B.box_from_relative(B.box_to_relative([0, 0, 640, 480], 640, 480), 640, 480)[2] == 639.36


def test_box_layouts_repair_and_point_parsing():
    assert B.to_pixel_xyxy([10, 20, 30, 40], "xywh", 100, 100) == [10, 20, 40, 60]
    assert B.to_pixel_xyxy([10, 20, 30, 40], "xyxy", 100, 100) == [10, 20, 30, 40]
    assert B.to_pixel_xyxy([0.1, 0.5, 0.3, 1.0], "xyxy_norm", 200, 100) == [20, 50, 60, 100]
    with pytest.raises(ValueError, match="box must be 4 numbers"):
        B.to_pixel_xyxy([1, 2, 3], "xywh", 10, 10)
    with pytest.raises(ValueError, match="box must be 4 numbers"):
        B.to_pixel_xyxy([1, 2, float("nan"), 4], "xywh", 10, 10)

    assert B.clip_box([-5, 10, 50, 120], 40, 100) == [0, 10, 40, 100]  # repaired by clipping
    with pytest.raises(ValueError, match="box lies outside the 40x100 image"):
        B.clip_box([45, 10, 60, 20], 40, 100)
    with pytest.raises(ValueError, match="box has zero area"):
        B.clip_box([5, 10, 5, 20], 40, 100)

    assert B.parse_points('[{"point_2d": [12, 34], "label": "ok"}]') == [[12, 34]]
    assert B.parse_points('```json\n{"point_2d": [1.5, 2]}\n```') == [[1.5, 2]]
    assert B.parse_points("click at (100, 200) then [3, 4]") == [[100, 200], [3, 4]]
    assert B.parse_points('[{"bbox_2d": [1, 2, 3, 4]}]') == []  # a box is not a point
    assert B.parse_points("nothing") == []
    assert B.point_in_box([5, 5], [0, 0, 5, 5]) and not B.point_in_box([6, 5], [0, 0, 5, 5])


# --- coco ------------------------------------------------------------------------------------

RED, BLUE = (220, 30, 30), (30, 30, 220)


def draw_scene(path, size, objects):
    """Rectangles of solid colours on white; objects: [(colour, [x1, y1, x2, y2]) exclusive]."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for colour, (x1, y1, x2, y2) in objects:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    image.save(path)


def colour_box(image: Image.Image, colour) -> list[float]:
    """Pixel [x1, y1, x2, y2] (exclusive) of the pixels close to ``colour``."""
    a = np.asarray(image.convert("RGB")).astype(int)
    ys, xs = np.nonzero(np.abs(a - np.array(colour)).sum(-1) < 120)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def coco_corpus(root):
    draw_scene(root / "a.png", (320, 200), [(RED, [40, 30, 120, 110]), (BLUE, [200, 120, 300, 190])])
    draw_scene(root / "b.png", (96, 160), [(RED, [10, 10, 50, 60])])
    for name in ("c.png", "d.png", "e.png"):
        draw_scene(root / name, (64, 64), [])
    images = [{"id": 1, "file_name": "a.png", "width": 320, "height": 200},
              {"id": 2, "file_name": "b.png"},  # no size: read from the header
              {"id": 3, "file_name": "c.png", "width": 64, "height": 64},
              {"id": 4, "file_name": "missing.png", "width": 64, "height": 64},
              {"id": 5, "file_name": "d.png", "width": 64, "height": 64},
              {"id": 6, "file_name": "e.png", "width": 64, "height": 64},
              {"id": 7, "file_name": "e.png", "width": 64, "height": 64}]  # no annotations
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [40, 30, 80, 80], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [200, 120, 100, 70], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 320, 200], "iscrowd": 1},
            {"id": 20, "image_id": 2, "category_id": 1, "bbox": [-10, 10, 60, 50], "iscrowd": 0},
            {"id": 30, "image_id": 3, "category_id": 1, "bbox": [70, 5, 10, 10], "iscrowd": 0},
            {"id": 40, "image_id": 4, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            {"id": 50, "image_id": 5, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},
            {"id": 60, "image_id": 6, "category_id": 9, "bbox": [5, 5, 10, 10], "iscrowd": 0}]
    categories = [{"id": 1, "name": "red block"}, {"id": 2, "name": "blue block"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def test_coco_samples_encode_and_their_boxes_land_on_the_objects_after_resize(tmp_path, processor):
    path = coco_corpus(tmp_path)
    bad = BadSampleLog("skip")
    samples = load(SourceConfig(path=str(path), format="coco"), bad)

    assert [s.id for s in samples] == ["1", "2"]
    scene = samples[0]
    answer = json.loads(scene.answer())
    assert [t["label"] for t in answer] == ["red block", "blue block"]  # crowd box left out
    assert answer[0]["bbox_2d"] == B.box_to_relative([40, 30, 120, 110], 320, 200)
    assert "red block, blue block" in scene.messages[0]["content"][1]["text"]
    assert scene.meta["image_size"] == [320, 200]
    # Image 2: size from the header, the box partly left of the image clipped to x=0.
    assert samples[1].meta["image_size"] == [96, 160] and samples[1].meta["boxes"] == [[0, 10, 50, 60]]

    assert [(r.index, r.sample_id) for r in bad.records] == [(2, "3"), (3, "4"), (4, "5"), (5, "6")]
    reasons = [r.reason for r in bad.records]
    assert "annotation 30: box lies outside the 64x64 image" in reasons[0]
    assert "image file not found: missing.png" in reasons[1]
    assert "annotation 50: box has zero area" in reasons[2]
    assert "annotation 60: category 9 is not in 'categories'" in reasons[3]

    encoded = SampleEncoder(processor, BUDGET).encode(scene)
    assert labels_text(processor, encoded) == scene.answer() + "<|im_end|>"
    assert TokenPlanner(processor, BUDGET).plan(scene).total == len(encoded["input_ids"])

    # The model sees the image resized by the processor; a box drawn from the relative answer
    # on that resized image must cover the same object.
    small = VisionBudget(32 * 32 * 4, 32 * 32 * 24)  # shrinks 320x200 to about half
    encoded = SampleEncoder(processor, small).encode(scene)
    _, grid_h, grid_w = encoded["image_grid_thw"][0].tolist()
    assert (grid_h, grid_w) == processor_grid(processor, 200, 320, small)[1:]
    size = (grid_w * 16, grid_h * 16)
    assert size[0] < 200 and size[0] / size[1] != 320 / 200
    resized = Image.open(tmp_path / "a.png").convert("RGB").resize(size, Image.BICUBIC)
    for target, colour in zip(answer, (RED, BLUE)):
        drawn = B.box_from_relative(target["bbox_2d"], *size)
        assert B.iou(drawn, colour_box(resized, colour)) > 0.9


def test_coco_per_category_and_error_policy(tmp_path):
    path = coco_corpus(tmp_path)
    samples = load(SourceConfig(path=str(path), format="coco", task="per_category",
                                prompt="Find each {label}."), BadSampleLog("skip"))
    assert [s.id for s in samples[:2]] == ["1-1", "1-2"]
    assert samples[1].messages[0]["content"][1]["text"] == "Find each blue block."
    assert [t["label"] for t in json.loads(samples[1].answer())] == ["blue block"]

    with pytest.raises(DataError, match=r"instances.json: sample 2 \(id 3\): annotation 30: box lies"):
        load(SourceConfig(path=str(path), format="coco"))
    with pytest.raises(DataError, match="tasks per_image, per_category; got task='point'"):
        load(SourceConfig(path=str(path), format="coco", task="point"))
    with pytest.raises(DataError, match=r"placeholder \{expression\} is not known to coco"):
        load(SourceConfig(path=str(path), format="coco", prompt="{expression}"))


# --- refcoco ---------------------------------------------------------------------------------


def png_cell(size, objects) -> dict:
    image = Image.new("RGB", size, "white")
    for colour, (x1, y1, x2, y2) in objects:
        ImageDraw.Draw(image).rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_refcoco_lmms_lab_parquet_layout(tmp_path, processor):
    features = Features({"question_id": Value("string"), "image": HFImage(),
                         "question": Value("string"), "answer": List(Value("string")),
                         "segmentation": List(Value("float32")), "bbox": List(Value("float32")),
                         "iscrowd": Value("int8"), "file_name": Value("string")})
    caption = "Please carefully observe the area circled in the image and come up with a caption."
    rows = {"question_id": ["r0", "r1", "r2", "r3"],
            "image": [png_cell((160, 96), [(RED, [100, 20, 150, 80])]),
                      png_cell((64, 128), []), png_cell((64, 64), []), None],
            "question": [caption] * 4,
            "answer": [["red thing right", "the red box"], ["left guy"], [], ["x"]],
            "segmentation": [[0.0] * 8] * 4,
            "bbox": [[100, 20, 50, 60], [80, 10, 20, 20], [1, 1, 5, 5], [1, 1, 5, 5]],
            "iscrowd": [0] * 4, "file_name": ["COCO_train2014_1_2.jpg"] * 4}
    # A local snapshot of the hub repo: parquet shards plus the card naming the splits.
    folder = tmp_path / "RefCOCO"
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(
        str(folder / "data" / "val-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                      "  - split: val\n    path: data/val-*\n---\n")

    bad = BadSampleLog("skip")
    samples = load(SourceConfig(path=str(folder), format="refcoco", split="val"), bad)
    assert [s.id for s in samples] == ["r0-0", "r0-1"]  # one sample per expression
    assert samples[1].messages[0]["content"][1]["text"] == \
        'Locate "the red box" in this image. Report bbox coordinates in JSON format.'
    (target,) = json.loads(samples[0].answer())
    assert target == {"bbox_2d": B.box_to_relative([100, 20, 150, 80], 160, 96),
                      "label": "red thing right"}
    assert samples[0].meta["image_size"] == [160, 96]  # from the image header
    assert [(r.index, r.sample_id) for r in bad.records] == [(1, "r1"), (2, "r2"), (3, "r3")]
    assert "box lies outside the 64x128 image" in bad.records[0].reason
    assert "no referring expression (column 'answer' is empty)" in bad.records[1].reason
    assert "missing image" in bad.records[2].reason

    encoded = SampleEncoder(processor, BUDGET).encode(samples[0])
    assert labels_text(processor, encoded) == samples[0].answer() + "<|im_end|>"

    points = load(SourceConfig(path=str(folder), format="refcoco", split="val", task="point"),
                  BadSampleLog("skip"))
    assert json.loads(points[0].answer())[0]["point_2d"] == B.point_to_relative([125, 50], 160, 96)


def test_refcoco_classic_refs_json(tmp_path):
    draw_scene(tmp_path / "COCO_train2014_000000000001.jpg", (200, 100), [(BLUE, [10, 10, 60, 90])])
    instances = {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg",
                             "width": 200, "height": 100}],
                 "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 80]}],
                 "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    refs = [{"ref_id": 0, "ann_id": 7, "image_id": 1, "split": "train",
             "sentences": [{"sent": "blue man", "sent_id": 0}, {"sent": "leftmost", "sent_id": 1}]},
            {"ref_id": 1, "ann_id": 7, "image_id": 1, "split": "testA",
             "sentences": [{"sent": "other split"}]}]
    (tmp_path / "refs.json").write_text(json.dumps(refs))

    samples = load(SourceConfig(path=str(tmp_path / "refs.json"), format="refcoco"))
    assert [s.id for s in samples] == ["0-0", "0-1"]
    assert json.loads(samples[1].answer()) == [
        {"bbox_2d": B.box_to_relative([10, 10, 60, 90], 200, 100), "label": "leftmost"}]
    with pytest.raises(DataError, match="no refs of split 'val'; splits here: testA, train"):
        load(SourceConfig(path=str(tmp_path / "refs.json"), format="refcoco", split="val"))


# --- screenspot ------------------------------------------------------------------------------


def test_screenspot_json_layouts_points_and_boxes(tmp_path, processor):
    draw_scene(tmp_path / "web_1.png", (400, 300), [(RED, [100, 200, 160, 230])])
    records = [
        {"img_filename": "web_1.png", "bbox": [100, 200, 60, 30], "instruction": "open menu",
         "data_type": "icon", "data_source": "shop"},
        {"img_filename": "web_1.png", "bbox": [100, 200, 60, 30], "instruction": "  "},
        {"img_filename": "gone.png", "bbox": [1, 2, 3, 4], "instruction": "x"},
        {"img_filename": "web_1.png", "bbox": [100, 200, 0, 30], "instruction": "flat"},
    ]
    (tmp_path / "screenspot_web.json").write_text(json.dumps(records))
    bad = BadSampleLog("skip")
    (sample,) = load(SourceConfig(path=str(tmp_path / "screenspot_web.json"),
                                  format="screenspot"), bad)
    assert json.loads(sample.answer()) == [
        {"point_2d": B.point_to_relative([130, 215], 400, 300), "label": "open menu"}]
    assert sample.meta["data_source"] == "shop" and sample.meta["boxes"] == [[100, 200, 160, 230]]
    assert [r.index for r in bad.records] == [1, 2, 3]
    assert ["empty instruction" in bad.records[0].reason,
            "image file not found: gone.png" in bad.records[1].reason,
            "box has zero area" in bad.records[2].reason] == [True] * 3
    encoded = SampleEncoder(processor, BUDGET).encode(sample)
    assert labels_text(processor, encoded) == sample.answer() + "<|im_end|>"
    # The point, mapped back to pixels of the original screenshot, hits the element.
    point = B.point_from_relative(B.parse_points(sample.answer())[0], 400, 300)
    assert B.point_in_box(point, sample.meta["boxes"][0])

    # JSONL: a broken line is a bad sample, the rest is read.
    (tmp_path / "ss.jsonl").write_text(json.dumps(records[0]) + "\n{not json\n")
    bad = BadSampleLog("skip")
    assert len(load(SourceConfig(path=str(tmp_path / "ss.jsonl"), format="screenspot"), bad)) == 1
    assert bad.records[0].index == 1 and "invalid JSON" in bad.records[0].reason

    # ScreenSpot-Pro: corners in pixels and the size in the record (no header read needed).
    pro = [{"img_filename": "web_1.png", "bbox": [100, 200, 160, 230], "instruction": "open menu",
            "img_size": [400, 300], "application": "vscode"}]
    (tmp_path / "pro.json").write_text(json.dumps(pro))
    (box,) = load(SourceConfig(path=str(tmp_path / "pro.json"), format="screenspot",
                               box_format="xyxy", task="bbox"))
    assert json.loads(box.answer())[0]["bbox_2d"] == B.box_to_relative([100, 200, 160, 230], 400, 300)
    assert "Report bbox coordinates" in box.messages[0]["content"][1]["text"]


def test_screenspot_hub_mirror_layout_uses_normalised_corners(tmp_path):
    features = Features({"file_name": Value("string"), "bbox": List(Value("float64")),
                         "instruction": Value("string"), "data_type": Value("string"),
                         "data_source": Value("string"), "image": HFImage()})
    Dataset.from_dict({"file_name": ["a.png"], "bbox": [[0.25, 0.5, 0.5, 0.75]],
                       "instruction": ["close window"], "data_type": ["icon"],
                       "data_source": ["windows"], "image": [png_cell((200, 100), [])]},
                      features=features).save_to_disk(str(tmp_path / "ss"))
    (sample,) = load(SourceConfig(path=str(tmp_path / "ss"), format="screenspot"))
    assert sample.meta["boxes"] == [[50.0, 50.0, 100.0, 75.0]]
    assert json.loads(sample.answer())[0]["point_2d"] == [375, 625]
    with pytest.raises(ValueError, match="box_format must be one of xywh, xyxy, xyxy_norm"):
        SourceConfig(path="x.json", format="screenspot", box_format="cxcywh")
    with pytest.raises(ValueError, match="box_format is read by the grounding formats"):
        SourceConfig(path="x.json", format="messages", box_format="xyxy")
