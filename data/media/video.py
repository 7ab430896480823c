"""Video references for Qwen3-VL: which frames to take, at what size, and decoding them.

A video is a file (mp4, webm, mkv, mov, avi; decoded with PyAV, which bundles its own FFmpeg)
or the frames of one: image paths in order, or a folder of them. Samples carry ``VideoRef``s,
not pixels. Three steps keep the token planner and the encoder in agreement:

``probe``   frame count, native fps, height and width from the container header (no pixel is
            decoded), or from the first frame's header for a frame list.
``plan``    the frame indices and the per-frame size, from the probe and the ``VisionBudget``,
            following qwen-vl-utils: ``duration * fps`` frames (or ``num_frames``), clamped to
            ``[min_frames, max_frames]`` and to the frames there are, and even (Qwen3-VL's
            temporal patch is 2 frames); indices evenly spread over the video. Each frame gets
            sides that are multiples of 32 and an area within ``[video_min_pixels,
            min(video_max_pixels, video_total_pixels / frames)]`` (floored at 1.05 x
            ``video_min_pixels``, as qwen-vl-utils and transformers do, so the total may be
            exceeded only when a video needs more frames than the total can hold at the floor).
``decode``  the planned frames, resized (bicubic, antialiased, as qwen-vl-utils does).

The processor then gets the frames with a ``VideoMetadata`` (native fps + sampled indices) and
``do_sample_frames=False`` / ``do_resize=False``, so it neither resamples nor resizes, and it
renders Qwen3-VL's text timestamps (``<t.t seconds>``, one per temporal patch: the mean time
of its two frames) from that metadata.

Frame lists follow qwen-vl-utils too: the frames are taken to be ``frame_fps`` apart in time
(``sample_fps`` in a record; default ``DEFAULT_FRAME_FPS`` = 2); at the default budget every
frame is kept, an odd count padded by repeating the last one.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from data.config import VisionBudget

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_FRAME_FPS = 2.0  # frame lists: seconds between frames = 1 / this, unless the record says
MAX_ASPECT_RATIO = 200  # Qwen3-VL's resize refuses longer sides than this


@dataclass(frozen=True)
class VideoRef:
    """One video of a sample plus the record's own sampling choices (None: the budget's)."""

    source: str | tuple[str, ...]  # a video file path, or frame image paths in order
    fps: float | None = None  # files: frames sampled per second
    num_frames: int | None = None  # sample exactly this many frames (files and frame lists)
    frame_fps: float | None = None  # frame lists: the rate the frames were taken at

    @property
    def is_frames(self) -> bool:
        return not isinstance(self.source, str)

    def __str__(self) -> str:
        if self.is_frames:
            return f"{self.source[0]} (+{len(self.source) - 1} more frames)"
        return self.source


@dataclass(frozen=True)
class VideoInfo:
    """What the header says: frame count, frames per second, and frame size."""

    total_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True)
class FramePlan:
    """The frames the model sees: indices into the video, their size, and the native fps."""

    indices: tuple[int, ...]
    height: int
    width: int
    fps: float
    total_frames: int

    def timestamps(self, temporal_patch_size: int = 2) -> list[float]:
        """Seconds rendered before each temporal patch: the mean time of its frames (the same
        arithmetic as transformers' Qwen3VLProcessor, so the formatted text matches)."""
        seconds = [i / self.fps for i in self.indices]
        k = temporal_patch_size
        return [(seconds[j] + seconds[j + k - 1]) / 2 for j in range(0, len(seconds), k)]

    def grid(self, patch_size: int = 16, temporal_patch_size: int = 2) -> tuple[int, int, int]:
        return (len(self.indices) // temporal_patch_size, self.height // patch_size,
                self.width // patch_size)

    def metadata(self):
        """transformers' ``VideoMetadata`` for the processor (timestamps come from it)."""
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(total_num_frames=self.total_frames, fps=self.fps, width=self.width,
                             height=self.height, duration=self.total_frames / self.fps,
                             frames_indices=list(self.indices), video_backend="pyav")


def processor_kwargs() -> dict:
    """``videos_kwargs`` for the processor: frames arrive sampled and resized by ``decode``."""
    return {"do_sample_frames": False, "do_resize": False, "cap_pixels_per_frame": False,
            "input_data_format": "channels_first"}


# ---------------------------------------------------------------------------------------------
# References


def make_ref(value, root: str, options: dict | None = None) -> VideoRef:
    """A ``VideoRef`` from a record's value: a video path, a frame folder, or a list of frame
    paths (``file://`` stripped, relative paths under ``root``). ``options`` are the record's
    qwen-vl-utils keys: ``fps`` or ``nframes`` / ``num_frames``, and ``sample_fps`` (frame lists).
    Raises ValueError saying what to change."""
    options = options or {}
    if isinstance(value, str):
        path = _resolve(value, root)
        source = tuple(list_frames(path)) if os.path.isdir(path) else path
        if os.path.isdir(path) and not source:
            raise ValueError(f"frame folder has no {'/'.join(FRAME_EXTENSIONS)} images: {value} "
                             f"(looked in {path})")
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        source = tuple(_resolve(v, root) for v in value)
    else:
        raise ValueError(f"a video is a path or a non-empty list of frame paths, got {value!r:.80}")

    fps = _number(options, "fps")
    num_frames = options.get("nframes", options.get("num_frames"))
    if fps is not None and num_frames is not None:
        raise ValueError("give a video either fps or nframes, not both")
    if fps is not None and not 0.1 <= fps <= 10:
        raise ValueError(f"video fps must be in [0.1, 10] frames per second, got {fps}")
    if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 2):
        raise ValueError(f"video nframes must be an integer >= 2, got {num_frames!r}")
    frame_fps = _number(options, "sample_fps")
    if frame_fps is not None and frame_fps <= 0:
        raise ValueError(f"video sample_fps must be > 0, got {frame_fps}")
    if frame_fps is not None and isinstance(source, str):
        raise ValueError("sample_fps applies to frame lists; a video file's rate is in its header")
    if fps is not None and not isinstance(source, str):
        raise ValueError("fps applies to video files; for frames give sample_fps (the rate they "
                         "were taken at) or nframes")
    return VideoRef(source, fps, num_frames, frame_fps)


def list_frames(folder: str) -> list[str]:
    """Image files of a frame folder in natural order (frame_2 before frame_10)."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS)]
    key = lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)]  # noqa: E731
    return [os.path.join(folder, n) for n in sorted(names, key=key)]


def _resolve(ref: str, root: str) -> str:
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    elif "://" in ref:
        raise ValueError(f"remote video URLs are not fetched: {ref[:80]}")
    return ref if os.path.isabs(ref) else os.path.join(root, ref)


def _number(options: dict, key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"video {key} must be a number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Probing (headers only)


def check(ref: VideoRef) -> str | None:
    """Why ``ref`` cannot be used as a video, naming the file, or None. Reads headers, and for
    a video file decodes its first frame (a file with no decodable frame is caught here)."""
    if ref.is_frames:
        from data.media.images import image_size

        for path in ref.source:
            if not os.path.isfile(path):
                return f"video frame not found: {path}"
        try:
            height, width = image_size(ref.source[0])
        except OSError as e:
            return f"video frame is not a readable image: {ref.source[0]} ({e})"
        return _aspect_problem(height, width, ref.source[0])
    path = ref.source
    if not os.path.isfile(path):
        return f"video file not found: {path}"
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        return (f"not a video file (expected {', '.join(VIDEO_EXTENSIONS)}, or a frame folder): "
                f"{path}")
    try:
        info = probe(ref)
        first_frame(path)
    except ValueError as e:
        return str(e)
    return _aspect_problem(info.height, info.width, path)


def _aspect_problem(height: int, width: int, path: str) -> str | None:
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        return (f"video frames are {width}x{height}, an aspect ratio past "
                f"{MAX_ASPECT_RATIO}:1 that Qwen3-VL cannot resize: {path}")
    return None


def probe(ref: VideoRef) -> VideoInfo:
    """Header facts of a video, without decoding pixels. Raises ValueError naming the file."""
    if ref.is_frames:
        from data.media.images import image_size

        height, width = image_size(ref.source[0])
        return VideoInfo(len(ref.source), ref.frame_fps or DEFAULT_FRAME_FPS, height, width)
    stat = os.stat(ref.source)
    return _probe_file(ref.source, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4096)
def _probe_file(path: str, mtime_ns: int, size: int) -> VideoInfo:  # mtime/size: cache key
    import av

    if size == 0:
        raise ValueError(f"unreadable video file (empty, 0 bytes): {path}")
    try:
        with av.open(path) as container:
            if container.format.name in ("image2", "gif") or container.format.name.endswith("_pipe"):
                raise ValueError(f"not a video file (it holds a {container.format.name} image): "
                                 f"{path}")
            if not container.streams.video:
                raise ValueError(f"video file has no video stream: {path}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            height, width = stream.codec_context.height, stream.codec_context.width
            frames = stream.frames
            if not frames and fps > 0:  # matroska/webm headers hold a duration, not a count
                if stream.duration is not None and stream.time_base is not None:
                    seconds = float(stream.duration * stream.time_base)
                else:
                    seconds = (container.duration or 0) / 1_000_000
                frames = round(seconds * fps)
    except av.FFmpegError as e:
        raise ValueError(f"unreadable video file ({_ffmpeg_reason(e)}): {path}") from None
    if fps <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"video header gives no frame rate or frame size: {path}")
    if frames <= 0:
        raise ValueError(f"video has no decodable frame (its header lists none): {path}")
    return VideoInfo(int(frames), fps, int(height), int(width))


def _ffmpeg_reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


# ---------------------------------------------------------------------------------------------
# Planning


def frame_count(info: VideoInfo, budget: VisionBudget, ref: VideoRef,
                temporal_patch_size: int = 2) -> int:
    """How many frames to sample (even; qwen-vl-utils' ``smart_nframes`` rules). A record's
    ``nframes`` beats its ``fps``, which beats the budget's ``num_frames``, then its ``fps``."""
    k = temporal_patch_size
    lo, hi = k * math.ceil(budget.min_frames / k), k * (budget.max_frames // k)
    if ref.num_frames is not None:
        wanted = k * round(ref.num_frames / k)
    elif ref.fps is None and budget.num_frames is not None:
        wanted = k * round(budget.num_frames / k)
    else:
        wanted = info.total_frames / info.fps * (ref.fps or budget.fps)
    wanted = min(max(wanted, lo), hi)
    if wanted >= info.total_frames:
        # Every frame; a frame list keeps all of its frames (odd counts pad the last one), a
        # video file drops its odd last frame, as qwen-vl-utils does.
        total = info.total_frames
        n = k * math.ceil(total / k) if ref.is_frames else k * (total // k)
    else:
        n = k * math.floor(wanted / k)
    return max(k, n)


def frame_indices(total_frames: int, n: int) -> tuple[int, ...]:
    """``n`` indices spread evenly over ``[0, total_frames)``; past the end, the last repeats."""
    if n <= total_frames:
        return tuple(int(i) for i in np.linspace(0, total_frames - 1, n).round())
    return tuple(range(total_frames)) + (total_frames - 1,) * (n - total_frames)


def frame_size(height: int, width: int, n: int, budget: VisionBudget, factor: int = 32,
               temporal_patch_size: int = 2) -> tuple[int, int]:
    """Resized (height, width) of each of ``n`` frames: sides multiples of ``factor``, area in
    ``[video_min_pixels, per-frame max]``. Uses transformers' Qwen3-VL video ``smart_resize``
    with the totals for ``n`` frames, i.e. what the video processor computes when handed
    ``size={"shortest_edge": n * min, "longest_edge": n * max}`` (see ``video_size_kwargs``)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    size = video_size_kwargs(n, budget)["size"]
    return smart_resize(n, height, width, temporal_factor=temporal_patch_size, factor=factor,
                        min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])


def per_frame_max_pixels(n: int, budget: VisionBudget) -> int:
    """Each frame's pixel cap: ``video_max_pixels``, or its share of ``video_total_pixels``
    (floored at 1.05 x ``video_min_pixels`` like qwen-vl-utils, never above the max)."""
    share = max(budget.video_total_pixels // n, int(budget.video_min_pixels * 1.05))
    return min(budget.video_max_pixels, share)


def video_size_kwargs(n: int, budget: VisionBudget) -> dict:
    """The video processor's ``size`` for ``n`` frames (its bounds count all frames together)."""
    return {"size": {"shortest_edge": n * budget.video_min_pixels,
                     "longest_edge": n * per_frame_max_pixels(n, budget)}}


def plan(info: VideoInfo, budget: VisionBudget, ref: VideoRef, patch_size: int = 16,
         merge_size: int = 2, temporal_patch_size: int = 2) -> FramePlan:
    n = frame_count(info, budget, ref, temporal_patch_size)
    height, width = frame_size(info.height, info.width, n, budget, patch_size * merge_size,
                               temporal_patch_size)
    return FramePlan(frame_indices(info.total_frames, n), height, width, info.fps,
                     info.total_frames)


# ---------------------------------------------------------------------------------------------
# Decoding


def load(ref: VideoRef, budget: VisionBudget, patch_size: int = 16, merge_size: int = 2,
         temporal_patch_size: int = 2):
    """(frames as a uint8 (T, 3, H, W) tensor, ``VideoMetadata``) ready for the processor."""
    frame_plan = plan(probe(ref), budget, ref, patch_size, merge_size, temporal_patch_size)
    return decode(ref, frame_plan), frame_plan.metadata()


def decode(ref: VideoRef, frame_plan: FramePlan) -> torch.Tensor:
    """The planned frames, resized. Frame ``i`` of a file is the first frame shown at or after
    ``i / fps`` seconds (its presentation time; its position in the stream when it has none).
    Frames that fail to decode are skipped; a video that ends before its header said repeats
    its last decoded frame, so the planned token count holds. Raises ValueError naming the file
    when no frame decodes. A file is read by seeking to the keyframe before each far planned
    frame, so long stretches without a planned frame are neither read nor decoded."""
    size = (frame_plan.height, frame_plan.width)
    if ref.is_frames:
        from data.media.images import load_image

        frames = {}
        for i in sorted(set(frame_plan.indices)):
            try:
                frames[i] = _resize(torch.from_numpy(np.array(load_image(ref.source[i]))), size)
            except OSError as e:
                raise ValueError(f"video frame is not a readable image: {ref.source[i]} ({e})") from None
    else:
        frames = _decode_file(ref.source, frame_plan.indices, size, frame_plan.fps)
    if not frames:
        raise ValueError(f"video has no decodable frame: {ref}")
    last = frames[max(frames)]
    return torch.stack([frames.get(i, last) for i in frame_plan.indices])


def first_frame(path: str) -> None:
    """Decode one frame of a video file; ValueError naming the file when none decodes."""
    if not _decode_file(path, (0,), None, fps=1.0):
        raise ValueError(f"video has no decodable frame: {path}")


SEEK_MIN_GAP = 8  # frames: a planned frame at most this far ahead is reached by decoding on


class _CannotSeek(Exception):
    """A seek failed or landed where the frames it skipped may hold the one wanted."""


def _decode_file(path: str, indices, size: tuple[int, int] | None,
                 fps: float) -> dict[int, torch.Tensor]:
    """Frames by planned index, reached by seeking (see ``_StreamReader``). Where seeking
    cannot be trusted (an error, a landing past the target, frames without timestamps), the
    frames still missing are decoded from the start of a freshly opened file, which always
    gives the right ones."""
    import av

    targets = sorted(set(indices))
    frames: dict[int, torch.Tensor] = {}
    try:
        try:
            with av.open(path) as container:
                _StreamReader(container, fps, may_seek=True).take(targets, size, frames)
        except _CannotSeek:
            with av.open(path) as container:
                missing = [t for t in targets if t not in frames]
                _StreamReader(container, fps, may_seek=False).take(missing, size, frames)
    except av.FFmpegError as e:
        raise ValueError(f"unreadable video file ({_ffmpeg_reason(e)}): {path}") from None
    return frames


class _StreamReader:
    """Decodes the first video stream of an open file forward, and jumps ahead with
    ``container.seek`` (to the keyframe before a target) when the next target is more than
    ``gap`` frames away. ``gap`` grows to the longest keyframe interval seen, and doubles past
    a seek that landed back among the frames already decoded, so seeks are made where a
    keyframe lies between here and the target; targets close together in a long group of
    pictures are reached by decoding on, not by decoding its start again for each."""

    def __init__(self, container, fps: float, may_seek: bool):
        self.container, self.fps, self.may_seek = container, fps, may_seek
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.start = self.stream.start_time or 0
        self.decoded = _decoded_frames(container, self.stream)
        self.frame, self.position = None, -1  # the last frame decoded and its index
        self.pixels = None  # that frame, resized (made once even when it serves several targets)
        self.count = 0  # frames decoded from the start: the index of a frame without pts
        self.seeked = False
        self.gap = SEEK_MIN_GAP
        self.last_keyframe: int | None = None  # index of the last keyframe decoded since a seek

    def take(self, targets: list[int], size, frames: dict[int, torch.Tensor]) -> None:
        """Fill ``frames`` for sorted ``targets``: each gets the first frame whose index is at
        or past it (one frame may serve several). Stops at the end of the video."""
        for target in targets:
            if self.may_seek and target > self.position + self.gap:
                self._seek_before(target)
            if not self._decode_to(target):
                return
            if self.pixels is None:
                self.pixels = _resize(torch.from_numpy(self.frame.to_ndarray(format="rgb24")), size)
            frames[target] = self.pixels

    def _decode_to(self, target: int) -> bool:
        """Decode on until the last frame's index is at or past ``target``; False at the end."""
        while self.position < target:
            frame = next(self.decoded, None)
            if frame is None:
                return False
            self._advance(frame)
        return True

    def _advance(self, frame) -> None:
        index = self._index(frame)
        self.count += 1
        if frame.key_frame:
            if self.last_keyframe is not None:
                self.gap = max(self.gap, index - self.last_keyframe)
            self.last_keyframe = index
        self.frame, self.position, self.pixels = frame, index, None

    def _index(self, frame) -> int:
        """``decode``'s frame index: presentation time x fps, or the position in the stream
        for a frame without pts (known only when decoding from the start)."""
        if frame.pts is None:
            if self.seeked:
                raise _CannotSeek
            return self.count
        return round(float((frame.pts - self.start) * self.stream.time_base) * self.fps)

    def _seek_before(self, target: int) -> None:
        """Seek to the keyframe at or before the last instant whose index is below ``target``.
        Trusted only when the first frame decoded there is a keyframe with an index below
        ``target``: the frames before a keyframe in the stream are shown before it, so none of
        them can be the target's, and decoding on finds the right one. (A first frame that is
        not a keyframe is a picture shown before it and decoded from references the seek
        skipped.) A seek that lands back among the frames already decoded is not wrong, only
        wasted; ``gap`` learns from it."""
        import av

        boundary = (target - 0.5) / self.fps / self.stream.time_base  # index `target` from here
        last_pts_before = self.start + math.ceil(boundary) - 1
        self.decoded.close()
        try:
            self.container.seek(last_pts_before, stream=self.stream, backward=True)
        except av.FFmpegError:
            raise _CannotSeek from None
        self.seeked = True
        self.decoded = _decoded_frames(self.container, self.stream)
        landing = next(self.decoded, None)
        if landing is None or not landing.key_frame or self._index(landing) >= target:
            raise _CannotSeek
        landed_at = self._index(landing)
        if landed_at <= self.position:  # wasted: the group of pictures is longer than `gap`
            self.gap = max(self.gap, 2 * (target - landed_at))  # (doubling bounds the waste)
        self.last_keyframe = None
        self._advance(landing)


def _decoded_frames(container, stream):
    """Frames of ``stream`` from where the file is read, in presentation order, the decoder
    drained at the end. ``container.decode`` does the same but stops at the first packet that
    fails to decode; here such a packet is skipped and decoding goes on."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.FFmpegError:
            continue
        yield from frames


def _resize(hwc: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8, bicubic with antialiasing (qwen-vl-utils' resize)."""
    chw = hwc.permute(2, 0, 1)
    if size is None or tuple(chw.shape[1:]) == tuple(size):
        return chw.contiguous()
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    return tvF.resize(chw, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
