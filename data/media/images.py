"""Image references: a file path, a ``file://`` URL, an inline ``data:image/...;base64,`` URI,
or a lazy reference into a container (a PDF page, a dataset row) whose scheme is listed in
``SCHEMES``: the module named there provides ``check_ref``, ``open_ref`` and ``ref_size``.

Samples carry references, not pixels; pixels are decoded only when a sample is encoded, and
``image_size`` reads just the header (the token planner's input).
"""

from __future__ import annotations

import base64
import binascii
import io
import os

from PIL import Image

DATA_URI_PREFIX = "data:image/"


# scheme prefix -> module with check_ref(ref) -> str | None, open_ref(ref) -> PIL image,
# ref_size(ref) -> (height, width) without decoding pixels.
SCHEMES: dict[str, str] = {
    "pdfpage://": "data.media.pdfpages",  # a PDF page rendered at a dpi (data/media/pdfpages.py)
    "hfrow://": "data.media.dataset_images",  # an image cell of a dataset (data/media/dataset_images.py)
}


def _scheme_module(ref: str):
    import importlib

    for prefix, module in SCHEMES.items():
        if ref.startswith(prefix):
            return importlib.import_module(module)
    return None


def is_inline(ref: str) -> bool:
    return ref.startswith(DATA_URI_PREFIX)


def resolve(ref: str, root: str) -> str:
    """An absolute path for file references (``file://`` stripped); inline URIs unchanged."""
    if is_inline(ref) or _scheme_module(ref):
        return ref
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    return ref if os.path.isabs(ref) else os.path.join(root, ref)


def check(ref: str) -> str | None:
    """Why ``ref`` cannot be an image (cheap checks only), or None."""
    if (module := _scheme_module(ref)) is not None:
        return module.check_ref(ref)
    if is_inline(ref):
        header, sep, payload = ref.partition(",")
        if not sep or not header.endswith(";base64"):
            return "inline image is not a base64 data URI (data:image/<type>;base64,...)"
        try:
            base64.b64decode(payload, validate=True)
        except binascii.Error:
            return "inline image has invalid base64 data"
        return None
    if "://" in ref:
        return f"remote image URLs are not fetched: {ref[:80]}"
    if not os.path.isfile(ref):
        return "image file not found"
    return None


def _open(ref: str):
    if (module := _scheme_module(ref)) is not None:
        return module.open_ref(ref)
    if is_inline(ref):
        return Image.open(io.BytesIO(base64.b64decode(ref.partition(",")[2])))
    return Image.open(ref)


def load_image(ref) -> Image.Image:
    """RGB pixels of a reference (path, inline data URI, archive member), or of an image already
    in memory (a PIL image, as lmms-eval tasks and decoded datasets hand them over)."""
    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    with _open(ref) as im:
        return im.convert("RGB")


def image_size(ref: str) -> tuple[int, int]:
    """(height, width) from the header, without decoding pixels."""
    if (module := _scheme_module(ref)) is not None:
        return module.ref_size(ref)
    with _open(ref) as im:
        width, height = im.size
    return height, width
