"""ms-swift's grounding layout: ``<ref-object>`` and ``<bbox>`` tags in the text, filled from the
record's ``objects``.

``{"objects": {"ref": ["a dog", ...], "bbox": [[x1, y1, x2, y2], ...], "bbox_type": "real",
"image_id": [0, ...]}}``: each ``<ref-object>`` tag (in any turn, in order) takes the next
``ref``; each ``<bbox>`` tag the next box, written in Qwen3-VL's convention as
``[x1, y1, x2, y2]``, integers relative to the image on the [0, 1000) scale (``data.boxes``). A
box of two numbers is a point ``[x, y]``. ``bbox_type``: ``real`` (default) pixels of the image
``image_id`` names (default 0) at its displayed size (``data.media.images.image_size``, after
EXIF orientation); ``norm1`` fractions of the image; ``norm1000`` already on the [0, 1000)
scale. Repair rule (as for the grounding formats): a box partly outside the image is clipped.
A tag count that differs from the objects' count, a malformed box, or a box of zero area or
outside the image is a bad sample.
"""

from __future__ import annotations

import json
import math
import re

from data import boxes as B
from data.media import images as images_lib

REF_TAG = "<ref-object>"
BOX_TAG = "<bbox>"
BBOX_TYPES = ("real", "norm1", "norm1000")


def has_object_tags(turns: list[dict]) -> bool:
    return any(isinstance(t["content"], str) and (REF_TAG in t["content"] or BOX_TAG in t["content"])
               for t in turns)


def fill_objects(turns: list[dict], objects, images: list[str], required: bool = False) -> list[dict]:
    """``turns`` (``role`` / ``content``; string contents hold the tags) with every tag
    replaced from ``objects``; ``images`` are the record's resolved images (for ``real`` boxes).
    Without ``objects`` the text stays as it is, unless ``required`` (format swift), where a tag
    without objects is a ValueError."""
    if objects is None:
        if required and has_object_tags(turns):
            raise ValueError(f"the text has {REF_TAG} / {BOX_TAG} tags but the record has no "
                             f"'objects' to fill them")
        return turns
    if not isinstance(objects, dict):
        raise ValueError(f"'objects' must be an object with ref / bbox lists, got "
                         f"{type(objects).__name__}")
    refs = _list(objects, "ref")
    raw_boxes = _list(objects, "bbox")
    if not all(isinstance(r, str) for r in refs):
        raise ValueError("'objects.ref' must be a list of strings")
    bbox_type = objects.get("bbox_type") or "real"
    if bbox_type not in BBOX_TYPES:
        raise ValueError(f"'objects.bbox_type' must be one of {', '.join(BBOX_TYPES)}, got "
                         f"{bbox_type!r}")
    image_ids = objects.get("image_id")
    if image_ids is None:
        image_ids = [0] * len(raw_boxes)
    elif isinstance(image_ids, int) and not isinstance(image_ids, bool):
        image_ids = [image_ids] * len(raw_boxes)
    if (not isinstance(image_ids, list) or len(image_ids) != len(raw_boxes)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in image_ids)):
        raise ValueError("'objects.image_id' must give an image index for each box")

    texts = [t["content"] for t in turns if isinstance(t["content"], str)]
    for tag, items, what in ((REF_TAG, refs, "refs"), (BOX_TAG, raw_boxes, "boxes")):
        n_tags = sum(text.count(tag) for text in texts)
        if n_tags != len(items):
            raise ValueError(f"{n_tags} {tag} tags but {len(items)} {what} in 'objects'")
    sizes: dict[int, tuple[int, int]] = {}
    boxes = [_relative(box, bbox_type, image_id, images, sizes)
             for box, image_id in zip(raw_boxes, image_ids)]

    ref_iter, box_iter = iter(refs), iter(boxes)

    def fill(m: re.Match) -> str:
        return next(ref_iter) if m.group(0) == REF_TAG else next(box_iter)

    pattern = re.compile(f"{re.escape(REF_TAG)}|{re.escape(BOX_TAG)}")
    return [{**t, "content": pattern.sub(fill, t["content"])} if isinstance(t["content"], str)
            else t for t in turns]


def _list(objects: dict, key: str) -> list:
    value = objects.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"'objects.{key}' must be a list, got {type(value).__name__}")
    return value


def _relative(box, bbox_type: str, image_id: int, images: list[str],
              sizes: dict[int, tuple[int, int]]) -> str:
    """One box (or point) of ``objects`` as Qwen3-VL text: ``[x1, y1, x2, y2]`` / ``[x, y]`` on
    the [0, 1000) scale."""
    if (not isinstance(box, list) or len(box) not in (2, 4)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in box)):
        raise ValueError(f"each 'objects.bbox' entry must be 4 numbers (a box) or 2 (a point), "
                         f"got {box!r:.80}")
    if bbox_type == "real":
        width, height = _image_size(image_id, images, sizes)
    else:
        width = height = 1 if bbox_type == "norm1" else B.SCALE
    if len(box) == 2:
        x, y = box
        if not (0 <= x <= width and 0 <= y <= height):
            raise ValueError(f"point {box} lies outside the {width}x{height} image "
                             f"({bbox_type} coordinates)")
        return json.dumps(B.point_to_relative([x, y], width, height))
    clipped = B.clip_box([float(v) for v in box], width, height)  # repair rule / ValueError
    return json.dumps(B.box_to_relative(clipped, width, height))


def _image_size(image_id: int, images: list[str], sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(width, height) of the record's image ``image_id`` as displayed."""
    if not 0 <= image_id < len(images):
        raise ValueError(f"'objects.image_id' {image_id} names no image (the record has "
                         f"{len(images)}); real boxes are pixels of one of its images")
    if image_id not in sizes:
        try:
            height, width = images_lib.image_size(images[image_id])
        except (OSError, SyntaxError) as e:  # data.media raises ValueErrors naming the file
            raise ValueError(f"unreadable image ({e}): {images[image_id][:120]}") from None
        sizes[image_id] = (width, height)
    return sizes[image_id]
