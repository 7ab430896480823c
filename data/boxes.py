"""Box and point conversions between pixels and Qwen3-VL's relative [0, 1000) coordinates.

Qwen3-VL states grounding outputs relative to the image it was shown, on a 0..999 integer
scale, independent of any resize. Data builders (pixel -> relative) and eval scorers
(relative -> pixel, IoU, point-in-box) both use this module so the two directions can never
disagree. A pixel coordinate survives the round trip to within half a step of
``size / 1000`` pixels (so within one pixel for sides up to 2000 px), except at the far edge,
which the [0, 1000) scale clamps to 999.
"""

from __future__ import annotations

import json
import math
import re

SCALE = 1000


RELATIVE_MAX = 1000  # Qwen3-VL's relative scale; replies use 0..999, 1000 is the far edge


def on_scale(coords: list[float]) -> bool:
    """Whether every coordinate is on Qwen3-VL's relative [0, 1000] scale."""
    return all(0 <= v <= RELATIVE_MAX for v in coords)


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


# --- Pixel box layouts of published corpora, repair rule, points -----------------------------

# ``xywh``: pixel [x, y, width, height] (COCO, RefCOCO, ScreenSpot v1/v2 JSON); ``xyxy``: pixel
# corners (ScreenSpot-Pro); ``xyxy_norm``: corners as fractions of the image size (the hub
# mirrors rootsautomation/ScreenSpot and HongxinLi/ScreenSpot_v2).
BOX_FORMATS = ("xywh", "xyxy", "xyxy_norm")


def to_pixel_xyxy(box, box_format: str, width: int, height: int) -> list[float]:
    """A box in ``box_format`` -> pixel ``[x1, y1, x2, y2]``; ValueError if it is not 4 finite
    numbers."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"unknown box format {box_format!r}; choose from {', '.join(BOX_FORMATS)}")
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in box)):
        raise ValueError(f"box must be 4 numbers, got {box!r:.80}")
    if box_format == "xywh":
        return xywh_to_xyxy([float(v) for v in box])
    if box_format == "xyxy_norm":
        return [box[0] * width, box[1] * height, box[2] * width, box[3] * height]
    return [float(v) for v in box]


def clip_box(box_xyxy: list[float], width: int, height: int) -> list[float]:
    """Repair rule for pixel boxes: a box partly outside the image is clipped to it. A box of
    zero (or negative) area, or one entirely outside the image, cannot be repaired: ValueError
    with the reason."""
    x1, y1, x2, y2 = box_xyxy
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box has zero area: {_fmt(box_xyxy)} (x1, y1, x2, y2 in pixels)")
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"box lies outside the {width}x{height} image: {_fmt(box_xyxy)} "
                         f"(x1, y1, x2, y2 in pixels)")
    return clipped


def box_center(box_xyxy: list[float]) -> list[float]:
    x1, y1, x2, y2 = box_xyxy
    return [(x1 + x2) / 2, (y1 + y2) / 2]


def point_to_relative(point_xy: list[float], width: int, height: int) -> list[int]:
    """Pixel ``[x, y]`` -> integers in [0, 1000) (``point_2d``)."""
    return [_rel(point_xy[0], width), _rel(point_xy[1], height)]


def point_from_relative(point_rel: list[float], width: int, height: int) -> list[float]:
    """Relative ``point_2d`` ``[x, y]`` on the [0, 1000) scale -> pixels in this image."""
    return [point_rel[0] * width / SCALE, point_rel[1] * height / SCALE]


def point_in_box(point_xy: list[float], box_xyxy: list[float]) -> bool:
    """ScreenSpot's hit test (edges count as inside); both in the same coordinates."""
    return box_xyxy[0] <= point_xy[0] <= box_xyxy[2] and box_xyxy[1] <= point_xy[1] <= box_xyxy[3]


_FENCE_RE = re.compile(r"^```(?:json)?\s*|\s*```$")
_POINT_LIST_RE = re.compile(r"[\[(]\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*[\])]")
_BOX_LIST_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,"
                          r"\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")


def answer_json(text: str):
    """(parsed JSON or None, text without a ```json fence) of a model answer."""
    body = _FENCE_RE.sub("", text.strip())
    try:
        return json.loads(body), body
    except json.JSONDecodeError:
        return None, body


def parse_boxes(text: str) -> list[list[float]]:
    """Boxes from a Qwen3-VL grounding answer: JSON ``[{"bbox_2d": [...]}, ...]`` (optionally
    in a ```json fence), a single object, or bare ``[x1, y1, x2, y2]`` lists. Order is kept."""
    data, _ = answer_json(text)
    return (_json_coords(data, "bbox_2d", 4)
            or [[float(v) for v in m] for m in _BOX_LIST_RE.findall(text)])


def parse_points(text: str) -> list[list[float]]:
    """Points from a Qwen3-VL pointing answer: JSON ``[{"point_2d": [x, y], ...}, ...]``
    (optionally in a ```json fence), a single object, or bare ``[x, y]`` / ``(x, y)`` pairs.
    Order is kept; nothing parsed gives []."""
    data, body = answer_json(text)
    return (_json_coords(data, "point_2d", 2)
            or [[float(x), float(y)] for x, y in _POINT_LIST_RE.findall(body)])


def _json_coords(data, key: str, size: int) -> list[list[float]]:
    """``key`` values of a JSON answer (a list of objects or one object), or the answer itself
    when it is a bare coordinate list; [] when neither."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return []
    found = [d[key] for d in data if isinstance(d, dict) and _is_coords(d.get(key), size)]
    if not found and _is_coords(data, size):
        found = [data]
    return [[float(v) for v in c] for c in found]


def _is_coords(value, size: int) -> bool:
    return (isinstance(value, list) and len(value) == size
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"
