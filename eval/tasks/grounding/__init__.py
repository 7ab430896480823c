"""Grounding benchmarks: RefCOCO / RefCOCO+ / RefCOCOg (Acc@IoU>=0.5) and ScreenSpot v1/v2
(point in box), ScreenSpot-Pro likewise, read with the training side's readers
(``data/sources/grounding.py``).

Loaders: RefCOCO family in the lmms-lab layout (``question_id, image, question, answer,
segmentation, bbox, iscrowd, file_name``; ``answer`` lists the referring expressions, one
sample each; ``bbox`` pixel ``[x, y, w, h]``) or the classic refs JSON; ScreenSpot as its JSON
(``img_filename, bbox [x, y, w, h], instruction, data_type, data_source``; v2 the same layout)
or a hub mirror (``box_format`` as in data/sources/grounding.py). A row the reader rejects fails the
load, naming the file and row: a benchmark must not shrink silently.

Prompts are Qwen3-VL's grounding style, the ones the training readers write
('Locate "..." in this image. Report bbox coordinates in JSON format.'); ``TaskSpec.prompt``
overrides them (``{expression}`` / ``{instruction}``).

Scoring: predictions are Qwen3-VL's relative [0, 1000) coordinates (JSON ``bbox_2d`` /
``point_2d``, fenced or not, or bare lists), mapped to pixels of the original image with the
same functions the data builders use to write targets (``data/boxes.py``). Several boxes or
points: only the FIRST counts (no best-of-N credit). ScreenSpot accepts a point or, failing
that, the centre of a box. Nothing parseable: 0, unparsed. A first box or point with a
coordinate outside [0, 1000] (pixel coordinates, or a runaway number) is not on Qwen3-VL's scale:
it is flagged as unparsed and scores 0, never mapped to a place off the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.boxes import (RELATIVE_MAX, box_center, box_from_relative, iou, on_scale,  # noqa: F401
                        parse_boxes, parse_points, point_from_relative, point_in_box)
from data.config import SourceConfig
from data.samples import BadSampleLog
from data.sources import load as load_source

def _load(spec, fmt: str, task: str, split: str | None, name: str, box_format: str | None = None):
    source = SourceConfig(path=spec.data, format=fmt, name=name, task=task,
                          split=spec.split or split, subset=spec.subset,
                          image_root=spec.image_root, prompt=spec.prompt, box_format=box_format)
    samples = load_source(source, BadSampleLog("error"))
    if not samples:
        raise ValueError(f"{spec.data}: no {name} samples (split {source.split!r})")
    return samples


@dataclass(frozen=True)
class RefCOCOTask:
    name: str
    split: str
    metric: str = "acc_iou50"

    @property
    def benchmark(self) -> str:  # RefCOCO, RefCOCO+ or RefCOCOg
        return "RefCOCO" + self.name.rpartition("_")[0][len("refcoco"):]

    def load(self, spec):
        return _load(spec, "refcoco", "bbox", self.split, self.name)

    def score(self, prediction: str, sample) -> tuple[float, bool]:
        boxes = parse_boxes(prediction)
        if not boxes or not on_scale(boxes[0]):
            return 0.0, False
        width, height = sample.meta["image_size"]
        predicted = box_from_relative(boxes[0], width, height)
        return float(iou(predicted, sample.meta["boxes"][0]) >= 0.5), True


@dataclass(frozen=True)
class ScreenSpotTask:
    name: str
    metric: str = "click_accuracy"
    split: str = "test"
    box_format: str | None = None  # None: the reader's default for the layout; Pro: "xyxy"

    @property
    def benchmark(self) -> str:
        return {"_v2": "ScreenSpot-v2", "_pro": "ScreenSpot-Pro"}.get(
            self.name[self.name.rfind("_"):], "ScreenSpot")

    def load(self, spec):
        return _load(spec, "screenspot", "point", None, self.name, self.box_format)

    def score(self, prediction: str, sample) -> tuple[float, bool]:
        width, height = sample.meta["image_size"]
        points = parse_points(prediction)
        if points:
            if not on_scale(points[0]):
                return 0.0, False
            point = point_from_relative(points[0], width, height)
        else:
            boxes = parse_boxes(prediction)
            if not boxes or not on_scale(boxes[0]):
                return 0.0, False
            point = box_center(box_from_relative(boxes[0], width, height))
        return float(point_in_box(point, sample.meta["boxes"][0])), True

    def breakdown(self, sample) -> dict:
        return {"type": sample.meta.get("data_type"), "source": sample.meta.get("data_source")}


GROUNDING_TASKS = [
    *(RefCOCOTask(f"refcoco_{split}", split) for split in ("val", "testA", "testB")),
    *(RefCOCOTask(f"refcoco+_{split}", split) for split in ("val", "testA", "testB")),
    *(RefCOCOTask(f"refcocog_{split}", split) for split in ("val", "test")),
    ScreenSpotTask("screenspot"),
    ScreenSpotTask("screenspot_v2"),
    ScreenSpotTask("screenspot_pro", box_format="xyxy"),  # its JSON: pixel corners, img_size
]
