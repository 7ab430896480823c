"""Video references for Qwen3-VL: which frames to take, at what size, and decoding them.

A video is a file (mp4, webm, mkv, mov, avi; decoded with PyAV, which bundles its own FFmpeg)
or the frames of one: image paths in order, or a folder of them. Samples carry ``VideoRef``s,
not pixels. Three steps keep the token planner and the encoder in agreement:

``probe``   frame count, native fps, height and width from the container header, or from the
            first frame's header for a frame list. Sizes are as players show the video: a
            display-matrix rotation (phone videos) of a quarter turn swaps them. PyAV exposes
            that rotation only on decoded frames, so the first frame is decoded (once per
            file; the result is cached).
``plan``    the frame indices and the per-frame size, from the probe and the ``VisionBudget``,
            following qwen-vl-utils: ``duration * fps`` frames (or ``num_frames``), clamped to
            ``[min_frames, max_frames]`` and to the frames there are, and even (Qwen3-VL's
            temporal patch is 2 frames); indices evenly spread over the video. Each frame gets
            sides that are multiples of 32 and an area within ``[video_min_pixels,
            min(video_max_pixels, video_total_pixels / frames)]`` (floored at 1.05 x
            ``video_min_pixels``, as qwen-vl-utils and transformers do, so the total may be
            exceeded only when a video needs more frames than the total can hold at the floor).
``decode``  the planned frames, resized (bicubic, antialiased, as qwen-vl-utils does) and
            turned upright. A planned frame that fails to decode repeats the sampled frame
            before it; ``load`` reports how many did (``LoadedVideo.filled``) and refuses a
            video where more than ``MAX_FILLED_FRACTION`` of them did.

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
from typing import NamedTuple

import numpy as np
import torch

from data.config import VisionBudget
from data.media.images import MAX_ASPECT_RATIO, MediaError, local_path, short_ref

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_FRAME_FPS = 2.0  # frame lists: seconds between frames = 1 / this, unless the record says
# MAX_ASPECT_RATIO (imported): Qwen3-VL's resize refuses longer sides than this, images and videos
MAX_FILLED_FRACTION = 0.1  # a video with more of its sampled frames undecodable is refused


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
    """What the header says: frame count, frames per second, and frame size as shown (after
    ``rotation``, the display rotation in degrees counter-clockwise: 0, 90, 180 or 270)."""

    total_frames: int
    fps: float
    height: int
    width: int
    rotation: int = 0


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


class LoadedVideo(NamedTuple):
    """What ``load`` gives the encoder: ``frames`` (uint8 (T, 3, H, W), upright), their
    ``metadata`` (transformers' ``VideoMetadata``), and ``filled``: how many of the T planned
    frames could not be decoded and repeat the sampled frame before them (a repair the
    encoder reports; 0 for a healthy video)."""

    frames: torch.Tensor
    metadata: object
    filled: int


def processor_kwargs() -> dict:
    """``videos_kwargs`` for the processor: frames arrive sampled and resized by ``decode``."""
    return {"do_sample_frames": False, "do_resize": False, "cap_pixels_per_frame": False,
            "input_data_format": "channels_first"}


# ---------------------------------------------------------------------------------------------
# References


def make_ref(value, root: str, options: dict | None = None, confine: bool = True) -> VideoRef:
    """A ``VideoRef`` from a record's value: a video path, a frame folder, or a list of frame
    paths (``file://`` stripped, relative paths under ``root``; with ``confine`` they must not
    lead out of it, see ``data.media.images.local_path``). ``options`` are the record's
    qwen-vl-utils keys: ``fps`` or ``nframes`` / ``num_frames``, and ``sample_fps`` (frame
    lists). Raises ValueError saying what to change."""
    options = options or {}
    if isinstance(value, str):
        path = local_path(value, root, confine, "video")
        source = tuple(list_frames(path)) if os.path.isdir(path) else path
        if os.path.isdir(path) and not source:
            raise ValueError(f"frame folder has no {'/'.join(FRAME_EXTENSIONS)} images: "
                             f"{short_ref(value)} (looked in {path})")
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        source = tuple(local_path(v, root, confine, "video") for v in value)
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
    a video file decodes its first frame (``probe`` does: a file with no decodable frame is
    caught here)."""
    if ref.is_frames:
        from data.media.images import image_size

        for path in ref.source:
            if not os.path.isfile(path):
                return f"video frame not found: {path}"
        try:
            height, width = image_size(ref.source[0])
        except (OSError, ValueError) as e:
            return f"unusable video frame: {e}"
        return _aspect_problem(height, width, ref.source[0])
    path = ref.source
    if not os.path.isfile(path):
        return f"video file not found: {path}"
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        return (f"not a video file (expected {', '.join(VIDEO_EXTENSIONS)}, or a frame folder): "
                f"{path}")
    try:
        info = probe(ref)  # decodes the first frame
    except ValueError as e:
        return str(e)
    return _aspect_problem(info.height, info.width, path)


def _aspect_problem(height: int, width: int, path: str) -> str | None:
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        return (f"video frames are {width}x{height}, an aspect ratio past "
                f"{MAX_ASPECT_RATIO}:1 that Qwen3-VL cannot resize: {path}")
    return None


def probe(ref: VideoRef) -> VideoInfo:
    """Header facts of a video, sizes as shown (see ``VideoInfo``). A file's first frame is
    decoded for its display rotation; a frame list's first image header is read. Raises
    ValueError (MediaError) naming the file."""
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
        raise MediaError(f"unreadable video file (empty, 0 bytes): {path}")
    try:
        with av.open(path) as container:
            if container.format.name in ("image2", "gif") or container.format.name.endswith("_pipe"):
                raise MediaError(f"not a video file (it holds a {container.format.name} image): "
                                 f"{path}")
            if not container.streams.video:
                raise MediaError(f"video file has no video stream: {path}")
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
            if fps <= 0 or height <= 0 or width <= 0:
                raise MediaError(f"video header gives no frame rate or frame size: {path}")
            if frames <= 0:
                raise MediaError(f"video has no decodable frame (its header lists none): {path}")
            rotation = _display_rotation(container, stream, path)
    except av.FFmpegError as e:
        raise MediaError(f"unreadable video file ({_ffmpeg_reason(e)}): {path}") from None
    if rotation % 180:
        height, width = width, height
    return VideoInfo(int(frames), fps, int(height), int(width), rotation)


def _display_rotation(container, stream, path: str) -> int:
    """The display rotation of the first frame that decodes (see ``_quarter_turns``), in
    degrees counter-clockwise. MediaError when no frame decodes."""
    for frame in _decoded_frames(container, stream):
        if not isinstance(frame, _Lost):
            return 90 * _quarter_turns(frame)
    raise MediaError(f"video has no decodable frame: {path}")


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show a decoded frame as players do, from its
    display matrix (PyAV's ``VideoFrame.rotation``, FFmpeg's sign: a phone video recorded
    upright is stored landscape with -90, turned a quarter clockwise). Rotations between
    quarter turns round to the nearest."""
    degrees = frame.rotation or 0
    return round(degrees / 90) % 4 if math.isfinite(degrees) else 0


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
         temporal_patch_size: int = 2) -> LoadedVideo:
    """The planned frames, upright and resized, with their ``VideoMetadata`` and the count of
    frames filled by repetition (``LoadedVideo``), ready for the processor. Raises MediaError
    naming the file when more than ``MAX_FILLED_FRACTION`` of the planned frames could not be
    decoded: such a video shows the model stills where it moved."""
    frame_plan = plan(probe(ref), budget, ref, patch_size, merge_size, temporal_patch_size)
    frames, filled = decode_counted(ref, frame_plan)
    planned = len(frame_plan.indices)
    if filled > MAX_FILLED_FRACTION * planned:
        raise MediaError(f"{filled} of {planned} sampled frames could not be decoded (more than "
                         f"{MAX_FILLED_FRACTION:.0%}): {ref}")
    return LoadedVideo(frames, frame_plan.metadata(), filled)


def decode(ref: VideoRef, frame_plan: FramePlan) -> torch.Tensor:
    """The planned frames (``decode_counted`` without the count)."""
    return decode_counted(ref, frame_plan)[0]


def decode_counted(ref: VideoRef, frame_plan: FramePlan) -> tuple[torch.Tensor, int]:
    """(the planned frames, resized and upright, as uint8 (T, 3, H, W); how many were filled).
    Frame ``i`` of a file is the first frame shown at or after ``i / fps`` seconds (its
    presentation time; its position in the stream when it has none). A planned frame whose
    own frame fails to decode, or that lies past the end of a video shorter than its header
    said, repeats the sampled frame before it, so the planned token count holds; those are
    counted. Raises MediaError naming the file when no frame decodes, and for a frame list
    with an unreadable image. A file is read by seeking to the keyframe before each far
    planned frame, so long stretches without a planned frame are neither read nor decoded."""
    size = (frame_plan.height, frame_plan.width)
    if ref.is_frames:
        from data.media.images import load_image

        frames = {}
        for i in sorted(set(frame_plan.indices)):
            try:
                frames[i] = _resize(torch.from_numpy(np.array(load_image(ref.source[i]))), size)
            except (OSError, ValueError) as e:
                raise MediaError(f"unusable video frame: {e}") from None
    else:
        frames = _decode_file(ref.source, frame_plan.indices, size, frame_plan.fps)
    if not frames:
        raise MediaError(f"video has no decodable frame: {ref}")
    return _fill(frames, frame_plan.indices)


def _fill(frames: dict[int, torch.Tensor], indices) -> tuple[torch.Tensor, int]:
    """The frames in planned order, each missing one repeating the planned frame before it
    (the first decoded one, for missing frames at the start), and how many were missing."""
    previous, out, filled = frames[min(frames)], [], 0
    for i in indices:
        filled += i not in frames
        previous = frames.get(i, previous)
        out.append(previous)
    return torch.stack(out), filled


SEEK_MIN_GAP = 8  # frames: a planned frame at most this far ahead is reached by decoding on


class _CannotSeek(Exception):
    """A seek failed or landed where the frames it skipped may hold the one wanted."""


def _decode_file(path: str, indices, size: tuple[int, int] | None,
                 fps: float) -> dict[int, torch.Tensor]:
    """Frames by planned index, reached by seeking (see ``_StreamReader``); planned indices
    whose frame failed to decode or lies past the end are absent. Where seeking cannot be
    trusted (an error, a landing past the target, frames without timestamps), the frames
    still missing are decoded from the start of a freshly opened file, which always gives the
    right ones."""
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
        raise MediaError(f"unreadable video file ({_ffmpeg_reason(e)}): {path}") from None
    return frames


class _StreamReader:
    """Decodes the first video stream of an open file forward, and jumps ahead with
    ``container.seek`` (to the keyframe before a target) when the next target is more than
    ``gap`` frames away. ``gap`` grows to the longest keyframe interval seen, and doubles past
    a seek that landed back among the frames already decoded, so seeks are made where a
    keyframe lies between here and the target; targets close together in a long group of
    pictures are reached by decoding on, not by decoding its start again for each.

    Frames lost to decode errors are remembered by index (``lost``, from the ``_Lost``
    markers of ``_decoded_frames``): a target whose first frame at or past it is a
    lost one gets no frame (it is filled, and counted, by ``decode_counted``), rather than
    silently the next frame that decoded."""

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
        self.lost: set[int] = set()  # indices of frames lost to decode errors

    def take(self, targets: list[int], size, frames: dict[int, torch.Tensor]) -> None:
        """Fill ``frames`` for sorted ``targets``: each gets the first frame whose index is at
        or past it (one frame may serve several), unless that frame was lost. Stops at the
        end of the video; a target one frame past the last (a frame count rounded up from a
        header's duration) still gets the last frame."""
        for target in targets:
            if self.may_seek and target > self.position + self.gap:
                self._seek_before(target)
            if not self._decode_to(target):
                just_past = target == self.position + 1 and target not in self.lost
                if self.frame is not None and just_past:
                    frames[target] = self._pixels(size)
                return
            if not any(target <= i < self.position for i in self.lost):
                frames[target] = self._pixels(size)

    def _pixels(self, size) -> torch.Tensor:
        if self.pixels is None:
            self.pixels = _frame_pixels(self.frame, size)
        return self.pixels

    def _decode_to(self, target: int) -> bool:
        """Decode on until the last frame's index is at or past ``target``; False at the end."""
        while self.position < target:
            frame = next(self.decoded, None)
            if frame is None:
                return False
            if isinstance(frame, _Lost):
                self.lost.add(self._lost_index(frame))
                continue
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

    def _lost_index(self, lost: _Lost) -> int:
        """The index of a lost frame: from its pts, else the one after the last decoded."""
        if lost.pts is None:
            return self.position + 1
        return round(float((lost.pts - self.start) * self.stream.time_base) * self.fps)

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
            raise _CannotSeek  # (a lost packet is no keyframe)
        landed_at = self._index(landing)
        if landed_at <= self.position:  # wasted: the group of pictures is longer than `gap`
            self.gap = max(self.gap, 2 * (target - landed_at))  # (doubling bounds the waste)
        self.last_keyframe = None
        self._advance(landing)


class _Lost(NamedTuple):
    """A frame lost to a decode error, in its place among the decoded frames: its pts (None
    when its packet had none) tells which planned frame is lost. Never a keyframe to seek to."""

    pts: int | None
    key_frame: bool = False


def _decoded_frames(container, stream):
    """Frames of ``stream`` from where the file is read, in presentation order, the decoder
    drained at the end. ``container.decode`` does the same but stops at the first packet that
    fails to decode; here decoding goes on, and each frame lost to a decode error yields a
    ``_Lost`` marker where it would have come. A frame is lost when its packet was demuxed, a
    decode error came after, and a later frame came out (decoders give frames in presentation
    order) or the stream ended, without it. Matching packets to frames by pts, rather than
    errors to the packets they were raised for, keeps the count right where a frame-threaded
    decoder reports an error packets later; requiring an error keeps it right where packet
    timestamps cannot be matched to frames (B-frames in AVI)."""
    import av

    pending: dict[int, int] = {}  # pts of a packet whose frame has not come out -> errors before
    errors = 0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.size:
            pending[packet.pts] = errors
        try:
            frames = packet.decode()
        except av.FFmpegError:
            errors += 1
            if packet.pts is None:  # nothing to match it by: lost where decoding stands
                yield _Lost(None)
            continue
        for frame in frames:
            if frame.pts is not None:
                yield from _lost_before(pending, errors, frame.pts)
            yield frame
    yield from _lost_before(pending, errors, None)


def _lost_before(pending: dict[int, int], errors: int, pts: int | None):
    """``_Lost`` markers for the pending packets shown before ``pts`` (all, when None) that a
    decode error followed; they are no longer pending, and neither is ``pts``, which came out."""
    gone = sorted(p for p in pending if pts is None or p < pts)
    for lost in gone:
        if errors > pending.pop(lost):
            yield _Lost(lost)
    pending.pop(pts, None)


def _frame_pixels(frame, size: tuple[int, int] | None) -> torch.Tensor:
    """A decoded frame as (3, h, w) uint8, shown as players show it: resized to ``size`` (the
    displayed size: the plan's) and turned by its display rotation. The resize is made on the
    stored frame (to ``size`` with sides swapped for a quarter turn) so the turn moves only the
    small frame; bicubic resizing treats both axes alike, so the order does not matter."""
    turns = _quarter_turns(frame)
    stored = size if size is None or turns % 2 == 0 else (size[1], size[0])
    pixels = _resize(torch.from_numpy(frame.to_ndarray(format="rgb24")), stored)
    return torch.rot90(pixels, turns, dims=(1, 2)).contiguous() if turns else pixels


def _resize(hwc: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8, bicubic with antialiasing (qwen-vl-utils' resize)."""
    chw = hwc.permute(2, 0, 1)
    if size is None or tuple(chw.shape[1:]) == tuple(size):
        return chw.contiguous()
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    return tvF.resize(chw, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
