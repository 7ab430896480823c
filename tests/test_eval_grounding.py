"""RefCOCO (Acc@IoU>=0.5) and ScreenSpot (point in box) on fixtures in the published layouts:
predictions in Qwen3-VL's relative [0, 1000) coordinates, first box only."""

from __future__ import annotations

import json

import pytest

from data.boxes import box_to_relative, point_to_relative
from eval.config import TaskSpec
from eval.tasks import get_task
from tests.helpers.benchmark_data import refcoco_folder, screenspot_file


@pytest.fixture
def refcoco(tmp_path):
    return refcoco_folder(tmp_path)


def test_refcoco_loads_one_sample_per_expression_and_scores_iou(refcoco):
    task = get_task("refcoco_testA")
    samples = task.load(TaskSpec(name="refcoco_testA", data=str(refcoco)))
    assert [s.id for s in samples] == ["q7-0", "q7-1"]
    assert "left guy" in samples[1].messages[0]["content"][-1]["text"]
    gold = box_to_relative([40, 20, 140, 180], 400, 200)           # the gold box, relative
    shifted = box_to_relative([60, 40, 160, 200], 400, 200)        # IoU about 0.54 with the gold box
    far = box_to_relative([200, 20, 300, 180], 400, 200)
    cases = [
        (json.dumps([{"bbox_2d": gold, "label": "man"}]), (1.0, True)),
        (f"```json\n{json.dumps([{'bbox_2d': shifted}])}\n```", (1.0, True)),
        (f"{far}", (0.0, True)),                                    # a bare list, wrong place
        (json.dumps([{"bbox_2d": far}, {"bbox_2d": gold}]), (0.0, True)),  # first box only
        ("the man on the left", (0.0, False)),
        # Pixel coordinates are not Qwen3-VL's convention: read as relative, they miss.
        ("[40, 20, 140, 180]", (0.0, True)),
    ]
    for prediction, expected in cases:
        assert task.score(prediction, samples[0]) == expected, prediction


def test_screenspot_point_or_box_centre_in_the_element(tmp_path):
    screenspot_file(tmp_path)
    task = get_task("screenspot_v2")
    (sample,) = task.load(TaskSpec(name="screenspot_v2", data=str(tmp_path / "screenspot_web.json")))
    inside, outside = point_to_relative([700, 125], 1000, 500), point_to_relative([500, 125], 1000, 500)
    assert task.score(json.dumps([{"point_2d": inside}]), sample) == (1.0, True)
    assert task.score(f"({outside[0]}, {outside[1]})", sample) == (0.0, True)
    assert task.score(json.dumps([{"bbox_2d": box_to_relative([650, 110, 750, 140], 1000, 500)}]),
                      sample) == (1.0, True)                       # a box: its centre counts
    assert task.score("I would click Sign in", sample) == (0.0, False)
    assert task.breakdown(sample) == {"type": "text", "source": "shop"}


def test_coordinates_off_the_relative_scale_are_flagged_not_mapped(refcoco, tmp_path):
    """Qwen3-VL states boxes on [0, 1000]; a coordinate beyond it would map off the image (and
    could still overlap the gold box once clipped): it is unparsed and scores 0."""
    task = get_task("refcoco_testA")
    sample = task.load(TaskSpec(name="refcoco_testA", data=str(refcoco)))[0]
    gold = box_to_relative([40, 20, 140, 180], 400, 200)
    assert task.score(json.dumps([{"bbox_2d": gold}]), sample) == (1.0, True)
    assert task.score(json.dumps([{"bbox_2d": [gold[0], gold[1], gold[2], 1000]}]), sample)[1]
    assert task.score(json.dumps([{"bbox_2d": [gold[0], gold[1], gold[2], 1001]}]), sample) == (0.0, False)
    assert task.score(f"[{gold[0]}, {gold[1]}, 1500, {gold[3]}]", sample) == (0.0, False)
    assert task.score(json.dumps([{"bbox_2d": [-5, gold[1], gold[2], gold[3]]}]), sample) == (0.0, False)
    screenspot_file(tmp_path)
    ss = get_task("screenspot_v2")
    (shot,) = ss.load(TaskSpec(name="screenspot_v2", data=str(tmp_path / "screenspot_web.json")))
    inside = point_to_relative([700, 125], 1000, 500)
    assert ss.score(json.dumps([{"point_2d": inside}]), shot) == (1.0, True)
    assert ss.score(json.dumps([{"point_2d": [700, 1250]}]), shot) == (0.0, False)  # pixels
    assert ss.score(json.dumps([{"bbox_2d": [650, 220, 750, 1280]}]), shot) == (0.0, False)


def test_screenspot_pro_reads_pixel_corners(tmp_path):
    """ScreenSpot-Pro's JSON: bbox as pixel corners [x1, y1, x2, y2] and the image size."""
    from PIL import Image

    Image.new("RGB", (2000, 1000), "white").save(tmp_path / "pro_1.png")
    (tmp_path / "pro.json").write_text(json.dumps([{
        "img_filename": "pro_1.png", "bbox": [1200, 200, 1400, 300], "img_size": [2000, 1000],
        "instruction": "Open the layer panel", "ui_type": "icon", "application": "photoshop"}]))
    task = get_task("screenspot_pro")
    (sample,) = task.load(TaskSpec(name="screenspot_pro", data=str(tmp_path / "pro.json")))
    assert task.benchmark == "ScreenSpot-Pro"
    inside = point_to_relative([1300, 250], 2000, 1000)
    assert task.score(json.dumps([{"point_2d": inside}]), sample) == (1.0, True)
    # Right of x2 = 1400: outside; read as [x, y, w, h] the box would reach x = 2000 and hit.
    beyond = point_to_relative([1500, 250], 2000, 1000)
    assert task.score(json.dumps([{"point_2d": beyond}]), sample) == (0.0, True)


def test_mmmu_dev_is_registered_with_its_split():
    task = get_task("mmmu_dev")
    assert (task.split, task.benchmark) == ("dev", "MMMU")


def test_a_bad_benchmark_row_fails_the_load_naming_it(tmp_path):
    (tmp_path / "ss.json").write_text(json.dumps([{"img_filename": "gone.png", "bbox": [1, 2, 3, 4],
                                                   "instruction": "x"}]))
    with pytest.raises(Exception, match=r"ss.json.*gone.png"):
        get_task("screenspot").load(TaskSpec(name="screenspot", data=str(tmp_path / "ss.json")))
