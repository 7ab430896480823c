"""A record's media: the lists it names them in, the roots relative paths resolve against, and
the checks every reader applies before a sample may exist.

Records name media in top-level lists (LLaMA-Factory / ms-swift ``images`` / ``videos``, LLaVA
``image`` / ``video``: a path or a list). ``record_media`` reads them with explicit type checks
(a number where a path belongs is a bad sample, never a crash) and refuses audio (``audios``),
which Qwen3-VL cannot take: a sample is never trained without media it names.

``MediaRoots`` resolves references: images against ``image_root``, videos against
``video_root`` (default: ``image_root``; default of both: the data file's folder). With
``confine`` (``SourceConfig.allow_outside_root`` false, the default) a relative path that leaves
its root is refused (``data.media``'s ``confine``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.config import SourceConfig
from data.media import images as images_lib
from data.media import video as video_lib

AUDIO_UNSUPPORTED = "audio is not supported by Qwen3-VL"


@dataclass(frozen=True)
class MediaRoots:
    """Where a source's relative media paths resolve, and whether they must stay there."""

    image_root: str
    video_root: str
    confine: bool = True

    @classmethod
    def for_source(cls, cfg: SourceConfig, default: str | Path) -> MediaRoots:
        """The roots ``cfg`` sets; ``default`` (the data file's folder) where it sets none."""
        image_root = cfg.image_root or str(default)
        return cls(image_root, cfg.video_root or image_root, not cfg.allow_outside_root)

    @classmethod
    def of(cls, root, confine: bool = True) -> MediaRoots:
        """``root`` as roots: a ``MediaRoots`` as it is, a folder for images and videos alike."""
        if isinstance(root, MediaRoots):
            return root
        return cls(str(root), str(root), confine)

    def image_ref(self, ref) -> str:
        """The resolved, checked reference of a record's image entry; ValueError saying why it
        cannot be used."""
        if not isinstance(ref, str) or not ref:
            raise ValueError(f"an image is a path, file:// URL or data URI, got {ref!r:.80}")
        resolved = images_lib.resolve(ref, self.image_root, confine=self.confine)
        problem = images_lib.check(resolved)
        if problem:
            where = "" if images_lib.is_inline(resolved) else f": {ref} (looked for {resolved})"
            raise ValueError(problem + where)
        return resolved

    def video_ref(self, value, options: dict | None = None):
        """The checked ``VideoRef`` of a video entry (a path, a frame folder or a list of frame
        paths) with its qwen-vl-utils ``options``; ValueError saying why it cannot be used."""
        ref = video_lib.make_ref(value, self.video_root, options, confine=self.confine)
        problem = video_lib.check(ref)  # names the file
        if problem:
            raise ValueError(problem)
        return ref


def media_list(record: dict, keys: tuple[str, ...], what: str, frames: bool = False) -> list:
    """The entries of the first of ``keys`` the record fills (a path or a list of them; with
    ``frames`` an entry may itself be a list of frame paths). Two of ``keys`` filled, or a value
    of the wrong type, is a ValueError."""
    filled = [k for k in keys if record.get(k) not in (None, [], "")]
    if len(filled) > 1:
        raise ValueError(f"the record has both {filled[0]!r} and {filled[1]!r}; give the "
                         f"{what} in one of them")
    if not filled:
        return []
    key = filled[0]
    value = record[key]
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        raise ValueError(f"{key!r} must be a path or a list of paths, got "
                         f"{type(value).__name__}")
    for entry in entries:
        ok = isinstance(entry, str) and entry
        if frames and isinstance(entry, list):
            ok = bool(entry) and all(isinstance(v, str) and v for v in entry)
        if not ok:
            raise ValueError(f"{key!r} holds {entry!r:.60}; each entry must be a "
                             f"{'path or a list of frame paths' if frames else 'path'}")
    return list(entries)


def record_media(record: dict, images: tuple[str, ...] = ("images", "image"),
                 videos: tuple[str, ...] = ("videos", "video"),
                 audios: tuple[str, ...] = ("audios", "audio")) -> tuple[list, list]:
    """(image entries, video entries) of a record's media lists, unresolved. Audio in any of
    ``audios`` is a ValueError: Qwen3-VL has no audio input, and training on the text alone
    would teach answers about sounds never heard."""
    for key in audios:
        if record.get(key) not in (None, [], ""):
            raise ValueError(f"{AUDIO_UNSUPPORTED} (the record has {key!r}); leave the sample out "
                             f"or remove its audio and <audio> tags")
    return media_list(record, images, "images"), media_list(record, videos, "videos", frames=True)
