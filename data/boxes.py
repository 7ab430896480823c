"""Box and point conversions between pixels and Qwen3-VL's relative [0, 1000) coordinates.

Qwen3-VL states grounding outputs relative to the image it was shown, on a 0..999 integer
scale, independent of any resize. Data builders (pixel -> relative) and eval scorers
(relative -> pixel, IoU) both use this module so the two directions can never disagree.
"""

from __future__ import annotations

SCALE = 1000


def box_to_relative(box_xyxy: list[float], width: int, height: int) -> list[int]:
    """Pixel ``[x1, y1, x2, y2]`` -> integers in [0, 1000)."""
    x1, y1, x2, y2 = box_xyxy
    return [_rel(x1, width), _rel(y1, height), _rel(x2, width), _rel(y2, height)]


def box_from_relative(box_rel: list[float], width: int, height: int) -> list[float]:
    """Relative ``[x1, y1, x2, y2]`` on the [0, 1000) scale -> pixels in this image."""
    x1, y1, x2, y2 = box_rel
    return [x1 * width / SCALE, y1 * height / SCALE, x2 * width / SCALE, y2 * height / SCALE]


def xywh_to_xyxy(box_xywh: list[float]) -> list[float]:
    """COCO-style pixel ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    x, y, w, h = box_xywh
    return [x, y, x + w, y + h]


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (any common scale)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(box: list[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _rel(v: float, size: int) -> int:
    return min(SCALE - 1, max(0, round(v / size * SCALE)))
