"""Tiny media files with one known defect or feature each, for the media tests: hand-written
PNGs (a header claiming any size, no pixels allocated), EXIF-oriented JPEGs, videos with a
display rotation or with chosen packets destroyed."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MARK = (255, 0, 0)  # the colour of the corner mark in oriented images and videos


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_png(path: Path, width: int, height: int) -> Path:
    """A valid-looking PNG whose header claims ``width`` x ``height`` 8-bit grey pixels, with a
    tiny IDAT: a decompression bomb of a few dozen bytes (nothing of that size is ever built)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))
    return path


def encoded(size: tuple[int, int], fmt: str = "PNG", color=(0, 0, 255), mark: bool = False,
            orientation: int | None = None) -> bytes:
    """A ``width x height`` image in ``fmt`` of one colour, with a ``MARK`` square in its stored
    top-left corner if ``mark``, and an EXIF orientation if given."""
    im = Image.new("RGB", size, color)
    if mark:
        side = max(1, min(size) // 4)
        im.paste(MARK, (0, 0, side, side))
    extra = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif
    buf = io.BytesIO()
    im.save(buf, format=fmt, **extra)
    return buf.getvalue()


def is_mark(pixel) -> bool:
    """A pixel close to ``MARK`` (JPEG and video coding shift colours a little)."""
    return pixel[0] > 180 and pixel[1] < 80 and pixel[2] < 80


def marked_video(path: Path, width: int = 64, height: int = 32, n_frames: int = 6,
                 rotation: int = 0, codec: str = "mpeg4") -> Path:
    """A video whose frames are black with a ``MARK`` square in the stored top-left corner,
    written with a display-matrix ``rotation`` (degrees counter-clockwise, PyAV's sign)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[: height // 2, : height // 2] = MARK
        for _ in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def zero_packets(path: Path, which) -> Path:
    """Overwrite the payload of the video packets numbered ``which`` (in file order) with zero
    bytes, as a damaged download or disk would: the container stays readable, those frames no
    longer decode."""
    import av

    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    blob = bytearray(path.read_bytes())
    for k in which:
        pos, size = spans[k]
        blob[pos:pos + size] = bytes(size)
    path.write_bytes(bytes(blob))
    return path
