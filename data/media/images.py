"""Image references: a file path, a ``file://`` URL, an inline base64 data URI
(``data:image/png;base64,...``, or Qwen's ``data:image;base64,...``), or a lazy reference into
a container (a PDF page, a dataset row) whose scheme is listed in ``SCHEMES``: the module named
there provides ``check_ref``, ``open_ref`` and ``ref_size``.

Samples carry references, not pixels; pixels are decoded only when a sample is encoded, and
``image_size`` reads just the header (the token planner's input). Both see the image as a
viewer shows it: the EXIF orientation is applied, so the size the planner counts is the size
the processor gets.

Every way an image can be unusable (missing, empty, not an image, truncated, a decompression
bomb, an aspect ratio the processor refuses) raises ``MediaError``, a ValueError whose message
is the whole reason and names the file. PIL raises a zoo of types for these (OSError,
SyntaxError, ``DecompressionBombError``, which is neither an OSError nor a ValueError); they are
converted here so that the readers' and the trainer's per-sample handling catches them all.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache

from PIL import Image, UnidentifiedImageError

from data.samples import SampleError

INLINE_PREFIXES = ("data:image/", "data:image;")  # with a subtype, and Qwen's spelling without
MAX_ASPECT_RATIO = 200  # Qwen3-VL's resize refuses a longer side than this times the shorter
# Images with more pixels are refused before any decode: PIL's own limit by default, the
# config's data.max_image_pixels through ``set_max_image_pixels``.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS (about 0.25 GB of RGB)
MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
# A JPEG this many times larger (per side) than the size it is resized to is decoded at a
# reduced scale (``Image.draft``: 1/2, 1/4 or 1/8, from the DCT coefficients): a 50 MP photo
# for a 1 MP budget costs 1/64 of the memory and time. Below it the full decode is kept, so
# ordinary images get exactly the pixels the HF processor would.
DRAFT_FACTOR = 2
SHORT_REF_CHARS = 160  # longer references are quoted with their middle left out
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 2-8 flips and quarter turns
# EXIF orientation -> the transpose that shows the stored pixels as viewers do (the table of
# PIL.ImageOps.exif_transpose). 5-8 swap width and height.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# What PIL raises on a damaged file, besides the OSError family: its parsers' SyntaxError and
# struct.error, EOFError, ValueError and IndexError from decoders given inconsistent headers.
_DAMAGED = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)


class MediaError(SampleError):
    """An image or video that cannot be used. A ValueError (every reader and the trainer's
    per-sample skip catch it); its message is the whole reason and names the file."""


# scheme prefix -> module with check_ref(ref) -> str | None, open_ref(ref) -> PIL image (as
# viewers show it), ref_size(ref) -> (height, width) without decoding pixels, and optionally
# describe(ref) -> where the image is, in words for messages.
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
    return ref.startswith(INLINE_PREFIXES)


def is_remote(ref: str) -> bool:
    """A URL of another machine (``http://``, ``s3://``...): not ``file://`` nor a lazy scheme."""
    return bool(_REMOTE.match(ref)) and not ref.startswith("file://") and not _scheme_module(ref)


def short_ref(ref) -> str:
    """A reference as messages quote it. A data URI becomes its header and payload size (the
    payload can be megabytes of base64 that would bury the reason); anything else longer than
    ``SHORT_REF_CHARS`` loses its middle. Paths shorter than that stay whole: a message must
    name the file."""
    ref = str(ref)
    if ref.startswith("data:"):
        header, sep, payload = ref.partition(",")
        return f"{header[:40]},...({len(payload)} bytes)" if sep else f"{ref[:40]}..."
    if len(ref) > SHORT_REF_CHARS:
        return f"{ref[:100]}...{ref[-(SHORT_REF_CHARS - 103):]}"
    return ref


# --- References -------------------------------------------------------------------------------


def resolve(ref: str, root: str, confine: bool = True) -> str:
    """A path for file references (``file://`` stripped, relative ones joined to ``root``);
    inline URIs and lazy references unchanged. Raises MediaError (a ValueError) for a remote
    URL, and with ``confine`` for a relative path that leads out of ``root`` (see
    ``local_path``)."""
    if is_inline(ref) or _scheme_module(ref):
        return ref
    return local_path(ref, root, confine, "image")


def local_path(ref: str, root: str, confine: bool = True, kind: str = "media") -> str:
    """The file a record's path names (images and videos alike). Absolute paths are the user's
    explicit choice and are kept. A relative one is joined to ``root``; with ``confine`` it
    must stay under ``root`` once normalised lexically (``..`` removed; symlinks are not
    followed: a symlinked dataset folder is legitimate), so a record cannot reach arbitrary
    files through ``../``. Remote URLs are refused: nothing is downloaded."""
    if is_remote(ref):
        raise MediaError(_remote(ref, kind))
    path = ref.removeprefix("file://")
    if os.path.isabs(path):
        return path
    joined = os.path.join(root, path)
    if confine:
        base = os.path.normpath(os.path.abspath(root))
        target = os.path.normpath(os.path.join(base, path))
        if os.path.commonpath([base, target]) != base:
            raise MediaError(f"media path '{short_ref(ref)}' resolves outside the data root "
                             f"{base}; move the file under it, or set allow_outside_root: true "
                             f"on the source")
    return joined


def _remote(ref: str, kind: str) -> str:
    return (f"remote {kind} URLs are not fetched: {short_ref(ref)} (download the files and use "
            f"local paths)")


def check(ref: str) -> str | None:
    """Why ``ref`` cannot be an image (cheap checks only: the header is read by
    ``image_size``), or None."""
    if (module := _scheme_module(ref)) is not None:
        return module.check_ref(ref)
    if is_inline(ref):
        try:
            _inline_bytes(ref)
        except MediaError as e:
            return str(e)
        return None
    if is_remote(ref):
        return _remote(ref, "image")
    if not os.path.isfile(ref):
        return "image file not found"
    return None


def _inline_bytes(ref: str) -> bytes:
    header, sep, payload = ref.partition(",")
    if not sep or not header.endswith(";base64"):
        raise MediaError(f"inline image is not a base64 data URI (data:image/<type>;base64,... "
                         f"or data:image;base64,...): {short_ref(ref)}")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise MediaError(f"inline image has invalid base64 data: {short_ref(ref)}") from None


def _opener(ref: str) -> tuple[Callable[[], Image.Image], int]:
    """(a function opening ``ref`` lazily as a fresh PIL image, its size in bytes) for a file
    or an inline URI."""
    if is_inline(ref):
        data = _inline_bytes(ref)
        return (lambda: Image.open(io.BytesIO(data))), len(data)
    return (lambda: Image.open(ref)), _stat(ref).st_size


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise MediaError(f"image file not found: {short_ref(path)}") from None
    except OSError as e:
        raise MediaError(f"cannot read image file ({e.strerror or e}): {short_ref(path)}") from None


# --- Checks shared by every encoded image (files, inline data, dataset cells) -------------------


@contextmanager
def pil_errors(name: str):
    """Turn what PIL raises for an unusable image into MediaError naming ``name`` (MediaError
    passes through). Wraps every open, verify and decode of an encoded image."""
    try:
        yield
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(f"image file not found: {name}") from None
    except UnidentifiedImageError:
        raise MediaError(f"not an image file (no image format recognises its contents): "
                         f"{name}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL refuses before the size is known to us; its message holds the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{found.group(1)} pixels" if found else str(e)
        raise MediaError(f"image too large to decode safely: {pixels} > {MAX_IMAGE_PIXELS} "
                         f"(a decompression bomb?): {name}") from None
    except OSError as e:
        if e.errno is not None:  # permissions, a folder: the file system's reason
            raise MediaError(f"cannot read image file ({e.strerror or e}): {name}") from None
        raise MediaError(f"truncated or corrupt image file ({e}): {name}") from None
    except _DAMAGED as e:
        raise MediaError(f"truncated or corrupt image file ({e or type(e).__name__}): "
                         f"{name}") from None


def set_max_image_pixels(limit: int) -> None:
    """Refuse images of more than ``limit`` pixels from now on, in this process (the config's
    ``data.max_image_pixels``). PIL's own guard (a warning above its limit, an error above twice
    it) moves along, so that it does not refuse first with its own message."""
    global MAX_IMAGE_PIXELS
    if limit <= 0:
        raise ValueError(f"max_image_pixels must be > 0, got {limit}")
    MAX_IMAGE_PIXELS = int(limit)
    Image.MAX_IMAGE_PIXELS = max(MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS)


def check_pixels(width: int, height: int, name: str) -> None:
    """MediaError unless a ``width`` x ``height`` image may be decoded and resized: at most
    ``MAX_IMAGE_PIXELS`` (checked from the header, before any decode: a few bytes of PNG can
    claim gigapixels) and an aspect ratio within ``MAX_ASPECT_RATIO``."""
    pixels = width * height
    if MAX_IMAGE_PIXELS is not None and pixels > MAX_IMAGE_PIXELS:
        raise MediaError(f"image too large to decode safely: {width}x{height} = {pixels} pixels "
                         f"> {MAX_IMAGE_PIXELS} (a decompression bomb?): {name}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise MediaError(f"image is {width}x{height}, an aspect ratio past {MAX_ASPECT_RATIO}:1 "
                         f"that Qwen3-VL cannot resize: {name}")


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 when absent or malformed) of an opened image, read from its
    header. PIL's ``getexif`` of a PNG decodes the whole image first (to find an eXIf chunk
    after the pixels); the base class's reads only what the header held, and the decoder
    (``upright``) uses this same value, so planned and decoded sizes always agree."""
    try:
        value = Image.Image.getexif(im).get(ORIENTATION_TAG, 1)
    except (*_DAMAGED, KeyError, TypeError):  # malformed EXIF: shown as stored
        return 1
    return value if value in _TRANSPOSE else 1


def upright(im: Image.Image) -> Image.Image:
    """``im`` as viewers show it: transposed by its EXIF orientation (decoding it), or ``im``
    itself when upright. The result carries no EXIF, so applying this twice is harmless."""
    method = _TRANSPOSE.get(orientation(im))
    if method is None:
        return im
    out = im.transpose(method)
    for key in ("exif", "Raw profile type exif"):
        out.info.pop(key, None)
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB pixels (a new image). Transparent pixels are composited onto white, as qwen-vl-utils
    and transformers' ``convert_to_rgb`` do, rather than keeping whatever colour they hold
    (often black, which would show the model a different picture)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def header_size(open_image: Callable[[], Image.Image], name: str, nbytes: int) -> tuple[int, int]:
    """The displayed (height, width) of an encoded image of ``nbytes`` bytes, checked without
    decoding pixels: not empty, an image, within ``check_pixels``' limits, and intact as far
    as ``verify`` can tell (for PNG: every chunk present with a correct checksum, so a
    truncated PNG is caught here; a truncated JPEG passes and fails when decoded).
    ``open_image`` opens a fresh lazy PIL image (``verify`` needs its own)."""
    if nbytes == 0:
        raise MediaError(f"empty image file (0 bytes): {name}")
    with pil_errors(name):
        with open_image() as im:
            width, height = im.size
            check_pixels(width, height, name)
            turned = orientation(im) in (5, 6, 7, 8)
        with open_image() as im:
            im.verify()
    return (width, height) if turned else (height, width)


# --- Reading --------------------------------------------------------------------------------


def image_size(ref: str) -> tuple[int, int]:
    """The displayed (height, width) from the header, without decoding pixels (see
    ``header_size``; EXIF orientations 5-8 swap the stored sides). Raises MediaError naming the
    file. File results are cached per (path, mtime, size): the planner asks again for every
    budget it tries while shrinking a sample."""
    if (module := _scheme_module(ref)) is not None:
        return module.ref_size(ref)
    if is_inline(ref):
        open_image, nbytes = _opener(ref)
        return header_size(open_image, short_ref(ref), nbytes)
    stat = _stat(ref)
    height, width = _file_size(ref, stat.st_mtime_ns, stat.st_size)
    check_pixels(width, height, short_ref(ref))  # the limit may have changed since it was cached
    return height, width


@lru_cache(maxsize=65536)
def _file_size(path: str, mtime_ns: int, nbytes: int) -> tuple[int, int]:  # mtime: cache key
    return header_size(lambda: Image.open(path), short_ref(path), nbytes)


def load_image(ref, fit: tuple[int, int] | None = None) -> Image.Image:
    """RGB pixels of a reference (path, inline data URI, archive member) as viewers show it
    (EXIF orientation applied, transparency on white), or of an image already in memory (a PIL
    image, as lmms-eval tasks and decoded datasets hand them over). Raises MediaError naming
    the file, with the reasons of ``image_size``.

    ``fit``: the displayed (height, width) the image will be resized to (the processor's
    ``smart_resize`` of its size under the budget). A JPEG at least ``DRAFT_FACTOR`` times larger
    per side is then decoded at a reduced scale and resized to exactly ``fit`` here, so the
    processor keeps that size (its resize of an already fitted size is the identity) and the
    token count stays the planned one."""
    if isinstance(ref, Image.Image):
        return to_rgb(upright(ref))
    name = short_ref(ref)
    if (module := _scheme_module(ref)) is not None:
        im = module.open_ref(ref)  # the scheme's own errors (e.g. a PDF's) pass as they are
        with pil_errors(getattr(module, "describe", short_ref)(ref)):
            return to_rgb(im)
    with pil_errors(name):
        open_image, nbytes = _opener(ref)
        if nbytes == 0:
            raise MediaError(f"empty image file (0 bytes): {name}")
        with open_image() as im:
            check_pixels(*im.size, name)
            if fit is not None and _draft(im, fit):
                return to_rgb(upright(im)).resize((fit[1], fit[0]), Image.Resampling.BICUBIC)
            return to_rgb(upright(im))


def _draft(im: Image.Image, fit: tuple[int, int]) -> bool:
    """Ask a JPEG decoder for a reduced scale that still covers ``fit`` (displayed height,
    width); True when it took one. Only JPEG decoders can scale while decoding."""
    if im.format != "JPEG":
        return False
    height, width = fit
    if orientation(im) in (5, 6, 7, 8):  # stored sideways: the stored sides are swapped
        height, width = width, height
    stored_w, stored_h = im.size
    if stored_w < DRAFT_FACTOR * width or stored_h < DRAFT_FACTOR * height:
        return False
    mode = "RGB" if im.mode in ("RGB", "YCbCr") else im.mode  # keep L / CMYK as they are
    im.draft(mode, (width, height))
    return im.size != (stored_w, stored_h)


def inspect_image(ref: str, decode: bool = False) -> tuple[int, int]:
    """The displayed (height, width) after ``image_size``'s header checks, and with ``decode``
    a full decode too (what finds a truncated JPEG, whose header looks intact). For a
    ``data check --decode`` pass. Raises MediaError naming the file."""
    size = image_size(ref)
    if decode:
        load_image(ref)
    return size
