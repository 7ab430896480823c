"""PDF pages as lazy image references: ``pdfpage:///abs/path/a.pdf#page=3&dpi=100``.

A document corpus can hold thousands of pages; rendering them all when a source is read would
cost minutes and gigabytes. A sample therefore carries one such reference per page (page
numbers are 1-based, as in PDF viewers), registered in ``data.media.images.SCHEMES``:

- ``ref_size`` gives the rendered (height, width) from the page size in points and the dpi
  (72 points per inch) without parsing or rendering the page, so the token planner stays cheap;
  it uses pypdfium2's own arithmetic (``ceil(points * scale)``), so it equals the rendered
  image's size exactly. A page so large that it would render past ``MAX_RENDER_PIXELS`` (PDF
  pages may be 200 inches a side: a 553-byte file can ask for gigabytes) is rendered at the
  lower scale that fits; the processor scales every page down to the vision budget anyway,
  far below this bound. The dpi of a reference must lie in ``PDF_DPI_RANGE``, as a source's.
- ``open_ref`` renders the page (RGB, white background) when a sample is encoded.
- ``check_ref`` says why a reference cannot be read (missing, corrupt or encrypted file,
  page out of range), or None.

PDFium is not thread-safe, so every call into it holds one lock (the document cache's). Open
documents are cached per process (keyed by path, size and mtime) so a multi-page sample opens
its file once.
"""

from __future__ import annotations

import math
import os
from urllib.parse import quote, unquote

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw

from data.config import PDF_DPI_RANGE
from data.media.cache import ProcessCache

SCHEME = "pdfpage://"
POINTS_PER_INCH = 72
# Most pixels a page is rendered at (16.8M, 4096 x 4096): above Qwen3-VL's largest image
# budget (max_pixels of 16M), so no page the model could see in more detail is reduced.
MAX_RENDER_PIXELS = 4096 * 4096
_docs = ProcessCache(8, close=lambda doc: doc.close())  # (path, size, mtime) -> PdfDocument
_lock = _docs.lock  # held around every PDFium call


def page_ref(path: str, page: int, dpi: int) -> str:
    """The reference of 1-based ``page`` of the PDF at ``path`` rendered at ``dpi``."""
    return f"{SCHEME}{quote(os.path.abspath(path))}#page={page}&dpi={dpi}"


def parse_ref(ref: str) -> tuple[str, int, int]:
    """(path, 1-based page, dpi) of a ``pdfpage://`` reference."""
    body, sep, fragment = ref[len(SCHEME):].rpartition("#")
    params = dict(item.partition("=")[::2] for item in fragment.split("&")) if sep else {}
    try:
        page, dpi = int(params["page"]), int(params["dpi"])
    except (KeyError, ValueError):
        raise ValueError(f"malformed PDF page reference {ref!r} (expected "
                         f"{SCHEME}/path/a.pdf#page=N&dpi=D)") from None
    low, high = PDF_DPI_RANGE
    if page < 1 or not low <= dpi <= high:
        raise ValueError(f"PDF page reference {ref!r}: page must be >= 1 and dpi in "
                         f"[{low}, {high}]")
    return unquote(body), page, dpi


def open_document(path: str):
    """The (cached) open document; ValueError naming the file and a reason a user can act on if
    it cannot be read."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"PDF file not found: {path}") from None
    if stat.st_size == 0:
        raise ValueError(f"empty PDF file (0 bytes): {path}")

    def open_fn():
        try:
            return pdfium.PdfDocument(path)
        except pdfium.PdfiumError as e:
            raise ValueError(_load_error(e, path)) from None
        except OSError as e:
            raise ValueError(f"cannot read PDF file ({e.strerror or e}): {path}") from None

    return _docs.get((path, stat.st_size, stat.st_mtime_ns), open_fn)


def _load_error(e, path: str) -> str:
    code = getattr(e, "err_code", None)
    if code == pdfium_raw.FPDF_ERR_PASSWORD:
        return f"encrypted PDF needs a password: {path}; decrypt it (e.g. qpdf --decrypt) or leave it out"
    if code == pdfium_raw.FPDF_ERR_FORMAT:
        return f"unreadable PDF (not a PDF file, or corrupted): {path}"
    if code == pdfium_raw.FPDF_ERR_SECURITY:
        return f"PDF uses an unsupported security handler: {path}"
    return f"unreadable PDF ({e}): {path}"


def page_count(path: str) -> int:
    with _lock:
        n = len(open_document(path))
    if n == 0:
        raise ValueError(f"PDF has no pages: {path}")
    return n


def _check_page(path: str, doc, page: int) -> None:
    if not 1 <= page <= len(doc):
        raise ValueError(f"page {page} out of range: {path} has {len(doc)} pages")


def page_points(path: str, page: int) -> tuple[float, float]:
    """(width, height) of a page in points, after its /Rotate, without parsing its content."""
    with _lock:
        doc = open_document(path)
        _check_page(path, doc, page)
        return doc.get_page_size(page - 1)


def render_scale(width_pt: float, height_pt: float, dpi: int) -> float:
    """Pixels per point a page is rendered at: ``dpi / 72``, lowered for a page that would
    exceed ``MAX_RENDER_PIXELS`` so that it fits (aspect ratio kept)."""
    scale = dpi / POINTS_PER_INCH
    pixels = math.ceil(width_pt * scale) * math.ceil(height_pt * scale)
    if pixels > MAX_RENDER_PIXELS:
        # floor(...) of the ideal scale, then step down until the ceil-rounded sides fit.
        scale *= math.sqrt(MAX_RENDER_PIXELS / pixels)
        while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > MAX_RENDER_PIXELS:
            scale *= 0.999
    return scale


def rendered_size(width_pt: float, height_pt: float, dpi: int) -> tuple[int, int]:
    """(height, width) in pixels: the same arithmetic as ``PdfPage.render(scale=...)`` at
    ``render_scale``."""
    scale = render_scale(width_pt, height_pt, dpi)
    return math.ceil(height_pt * scale), math.ceil(width_pt * scale)


def page_text(path: str, page: int) -> str:
    """The page's text layer (empty for scanned pages), with ``\\n`` line ends and no trailing
    spaces on lines."""
    with _lock:
        doc = open_document(path)
        _check_page(path, doc, page)
        pdf_page = doc[page - 1]
        try:
            text_page = pdf_page.get_textpage()
            try:
                text = text_page.get_text_range()
            finally:
                text_page.close()
        finally:
            pdf_page.close()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


# --- the data.media.images scheme interface ---------------------------------------------------------

def ref_size(ref: str) -> tuple[int, int]:
    path, page, dpi = parse_ref(ref)
    return rendered_size(*page_points(path, page), dpi)


def check_ref(ref: str) -> str | None:
    try:
        path, page, _ = parse_ref(ref)
        page_points(path, page)
    except ValueError as e:
        return str(e)
    return None


def open_ref(ref: str):
    """The rendered page as an RGB PIL image of exactly ``ref_size(ref)``. Failures are OSError
    (what the trainer's mid-run skip catches)."""
    try:
        path, page, dpi = parse_ref(ref)
        points = page_points(path, page)
        height, width = rendered_size(*points, dpi)
        with _lock:
            pdf_page = open_document(path)[page - 1]
            try:
                bitmap = pdf_page.render(scale=render_scale(*points, dpi), rev_byteorder=True)
                image = bitmap.to_pil().convert("RGB")  # a copy: independent of the bitmap
                bitmap.close()
            finally:
                pdf_page.close()
    except (ValueError, pdfium.PdfiumError) as e:
        raise OSError(f"cannot render {ref}: {e}") from None
    if image.size != (width, height):  # pypdfium2 changed its rounding: keep the planner exact
        image = image.resize((width, height))
    return image
