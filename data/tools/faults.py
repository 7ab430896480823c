"""A deliberately broken corpus: one sample per kind of bad input, beside good samples.

``scripts/bench_data.py`` and ``tests/test_bad_input.py`` feed it through the whole data path
(read -> plan -> encode) to show that nothing crashes and that every bad sample is reported
with its file, record and reason. Each bad sample's id names its kind (``bad-<kind>``); the
samples in ``REPAIRED`` are fixed by a documented rule instead and must come out good.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data.config import SourceConfig
from data.tools.synthetic import write_grey_video

# sample id -> the rule that repairs it (these samples must encode, not be reported)
REPAIRED = {
    "good-tiny_image": "a 1x1 image is upscaled by the processor to min_pixels (sides of 32)",
    "good-images_without_tags": "images go before the first user text (LLaVA convention)",
    "1": "a COCO box partly outside the image is clipped to it (data/sources/grounding.py)",
    "good-exif_orientation": "a phone JPEG's EXIF orientation is applied, as viewers do",
    "good-rotated_video": "a video's display-matrix rotation is applied, as players do",
    "good-few_frames_filled": "a few undecodable video frames repeat the frame before them "
                              "(recorded as a repair)",
}
# Lines that cannot be parsed have no sample id: they are named by line and this reason.
UNPARSEABLE = {"bad-invalid_json_line": "invalid JSON", "bad-non_utf8_text": "not valid UTF-8"}
# Repaired samples whose repair is recorded in the bad-sample log (stage "repaired").
RECORDED_REPAIRS = ("good-few_frames_filled",)
# Repaired samples that must come out in their displayed orientation: portrait (taller than wide).
UPRIGHT = ("good-exif_orientation", "good-rotated_video")


def _png(path: Path, size=(64, 48), seed=0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.name


def _video(path: Path, frames: int) -> str:
    return write_grey_video(path, frames, level_step=20).name


def _audio_only(path: Path) -> str:
    """A valid MP4 with a sound track and no video frame at all."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.name


def _oriented_jpeg(path: Path) -> str:
    """A landscape 64x32 JPEG whose EXIF orientation 6 (a phone held upright) shows it
    portrait, 32 wide and 64 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32), (200, 30, 30)).save(path, exif=exif)
    return path.name


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header claims ``width`` x ``height`` grey pixels (a
    decompression bomb, if anything decoded it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _bomb_png(path: Path, side: int = 100_000) -> str:
    path.write_bytes(png_claiming(side, side))
    return path.name


def _video_with_bad_tail(path: Path, frames: int, bad_tail: int, rotation: int = 0) -> str:
    """An MJPEG video of ``frames`` frames (4 fps) whose last ``bad_tail`` packets hold garbage
    that fails to decode; ``rotation``: a display-matrix rotation in degrees (kept by MKV and
    MP4, not by AVI)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuvj420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            pixels = np.full((32, 64, 3), 8 * i % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                if i >= frames - bad_tail:
                    garbage = av.Packet(b"\x00" * 64)
                    garbage.pts, garbage.dts = packet.pts, packet.dts
                    garbage.time_base, garbage.stream = packet.time_base, packet.stream
                    packet = garbage
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.name


def _chat(sample_id: str, question: str, answer: str | None = "an answer", **media) -> dict:
    turns = [{"from": "human", "value": question}]
    if answer is not None:
        turns.append({"from": "gpt", "value": answer})
    return {"id": sample_id, **media, "conversations": turns}


def write_faulty_corpus(out: str | Path, n_good: int = 8) -> tuple[list[SourceConfig], dict[str, str]]:
    """Write the corpus under ``out``; return its sources and {bad sample id: kind}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good = [_chat(f"good-{i}", "<image>\nDescribe.", "noise", image=_png(out / f"good{i}.png", seed=i))
            for i in range(n_good)]
    good.append(_chat("good-video", "<video>\nWhat happens?", "it flickers",
                      video=_video(out / "good.mp4", 12)))

    (out / "corrupt.png").write_bytes(np.random.default_rng(1).bytes(300))
    (out / "zero.png").write_bytes(b"")
    truncated = (out / "full.png")
    _png(truncated, size=(128, 96), seed=9)
    (out / "truncated.png").write_bytes(truncated.read_bytes()[:400])
    _png(out / "thin.png", size=(600, 2))  # 300:1, past the processor's 200:1 limit
    _png(out / "tiny.png", size=(1, 1))
    (out / "text.mp4").write_text("not a video")
    (out / "zero.mp4").write_bytes(b"")
    _audio_only(out / "noframes.mp4")

    bad = {
        "corrupt_image": _chat("bad-corrupt_image", "<image>\nQ", image="corrupt.png"),
        "zero_byte_image": _chat("bad-zero_byte_image", "<image>\nQ", image="zero.png"),
        "truncated_image": _chat("bad-truncated_image", "<image>\nQ", image="truncated.png"),
        "missing_image": _chat("bad-missing_image", "<image>\nQ", image="gone.png"),
        "extreme_aspect_ratio": _chat("bad-extreme_aspect_ratio", "<image>\nQ", image="thin.png"),
        "unreadable_video": _chat("bad-unreadable_video", "<video>\nQ", video="text.mp4"),
        "zero_byte_video": _chat("bad-zero_byte_video", "<video>\nQ", video="zero.mp4"),
        "video_without_frames": _chat("bad-video_without_frames", "<video>\nQ", video="noframes.mp4"),
        "placeholder_mismatch": _chat("bad-placeholder_mismatch", "<image><image>\nQ",
                                      image=_png(out / "one.png")),
        "empty_assistant_turn": _chat("bad-empty_assistant_turn", "<image>\nQ", "",
                                      image=_png(out / "e.png")),
        "missing_assistant_turn": _chat("bad-missing_assistant_turn", "<image>\nQ", None,
                                        image=_png(out / "m.png")),
        "non_string_media_field": _chat("bad-non_string_media_field", "<image>\nQ", image=7),
        "decompression_bomb": _chat("bad-decompression_bomb", "<image>\nQ",
                                    image=_bomb_png(out / "bomb.png")),
        "undecodable_frames": _chat("bad-undecodable_frames", "<video>\nQ",
                                    video=_video_with_bad_tail(out / "bad_tail.avi", 16, 8)),
    }
    repaired = [_chat("good-tiny_image", "<image>\nQ", "a dot", image="tiny.png"),
                _chat("good-images_without_tags", "What is shown?", "noise",
                      image=_png(out / "untagged.png")),
                _chat("good-exif_orientation", "<image>\nQ", "red",
                      image=_oriented_jpeg(out / "phone.jpg")),
                _chat("good-rotated_video", "<video>\nQ", "grey",
                      video=_video_with_bad_tail(out / "portrait.mkv", 8, 0, rotation=90)),
                _chat("good-few_frames_filled", "<video>\nQ", "grey",
                      video=_video_with_bad_tail(out / "one_bad.avi", 60, 2))]
    lines = [json.dumps(r) for r in good + repaired + list(bad.values())]
    lines.insert(3, '{"id": "bad-invalid_json_line", "conversations": [')
    raw = "\n".join(lines).encode()
    raw += b'\n{"id": "bad-non_utf8_text", "conversations": [{"from": "human", "value": "caf\xe9"}]}\n'
    (out / "train.jsonl").write_bytes(raw)
    expected = {f"bad-{kind}": kind for kind in bad}
    expected["bad-invalid_json_line"] = "invalid_json_line"
    expected["bad-non_utf8_text"] = "non_utf8_text"

    # A LLaMA-Factory / ms-swift style chat file in a folder of its own (its data root):
    # top-level media lists with tags in the text.
    sub = out / "sub"
    sub.mkdir(exist_ok=True)
    _png(out / "outside.png")

    def turns(question: str) -> list[dict]:
        return [{"role": "user", "content": question}, {"role": "assistant", "content": "A."}]

    listed = {
        "good-listed_media": {"messages": turns("<image>Q"), "images": [_png(sub / "in.png")]},
        "bad-path_outside_root": {"messages": turns("<image>Q"), "images": ["../outside.png"]},
        "bad-media_named_not_attached": {"messages": turns("<image>What is this?")},
        "bad-audio": {"messages": turns("<audio>What is said?"), "audios": ["speech.wav"]},
    }
    (sub / "extra.jsonl").write_text("".join(json.dumps({"id": k, **v}) + "\n"
                                             for k, v in listed.items()))
    expected.update({k: k.removeprefix("bad-") for k in listed if k.startswith("bad-")})

    # Documents: an unreadable PDF referenced by an annotation file.
    (out / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    (out / "docs.jsonl").write_text(json.dumps({"id": "bad-unreadable_pdf", "pdf": "broken.pdf",
                                                "question": "Title?", "answer": "none"}) + "\n")
    expected["bad-unreadable_pdf"] = "unreadable_pdf"
    # Grounding: a COCO file whose second image has a box entirely outside it (the first has
    # a box partly outside, which is clipped: a documented repair).
    _png(out / "scene.png", size=(100, 80))
    coco = {"categories": [{"id": 1, "name": "ball"}],
            "images": [{"id": 1, "file_name": "scene.png", "width": 100, "height": 80},
                       {"id": 2, "file_name": "scene.png", "width": 100, "height": 80}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [80, 60, 40, 40]},
                            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [150, 10, 20, 20]}]}
    (out / "coco.json").write_text(json.dumps(coco))
    expected["2"] = "box_outside_image"  # COCO samples are named by image id
    sources = [SourceConfig(path=str(out / "train.jsonl"), name="chat"),
               SourceConfig(path=str(sub / "extra.jsonl"), format="messages", name="listed"),
               SourceConfig(path=str(out / "docs.jsonl"), format="pdf", name="docs", task="qa"),
               SourceConfig(path=str(out / "coco.json"), format="coco", name="boxes")]
    return sources, expected


def audit(cfg, processor) -> dict:
    """Read, plan and encode every sample of ``cfg`` (a DataConfig) under the skip policy, as a
    training run would. Returns the good ids, every bad-sample record, the records of samples
    used after a repair, and the exceptions that escaped (crashes: a correct pipeline has none)."""
    from data.corpus import load_corpus
    from data.encode import REPAIRS
    from data.samples import BadSampleLog, reason_of

    log = BadSampleLog("skip")
    crashes: list[str] = []
    try:
        corpus = load_corpus(cfg, processor, log, plan=True)
    except Exception as e:  # noqa: BLE001 - counting what escapes is the point
        return {"good": [], "bad": log.records, "crashes": [f"{type(e).__name__}: {e}"]}
    good, repaired, grids = [], [], {}
    for index, sample in enumerate(corpus.samples):
        try:
            example = corpus.encoder_for(index).encode(sample)
            good.append(sample.id)
            grids[sample.id] = [tuple(g.tolist()) for key in ("image_grid_thw", "video_grid_thw")
                                for g in example.get(key, [])]
            repaired += [corpus.bad_record(index, reason) for reason in example.pop(REPAIRS, [])]
        except (OSError, ValueError) as e:  # what EncodedDataset skips and reports mid-run
            log.records.append(corpus.bad_record(index, reason_of(e)))
        except Exception as e:  # noqa: BLE001
            crashes.append(f"{sample.id}: {type(e).__name__}: {e}")
    return {"good": good, "bad": log.records, "repaired": repaired, "grids": grids,
            "crashes": crashes}


def tally(result: dict, expected: dict[str, str]) -> dict:
    """How many kinds of hostile input ``audit`` met and handled: each bad sample reported (the
    unparseable lines, which have no id, by their reason), each oriented medium trained in its
    displayed orientation (a portrait grid), each recorded repair on record."""
    reported = {r.sample_id for r in result["bad"]}
    unparsed = " ".join(r.reason for r in result["bad"] if r.sample_id is None)
    handled = {k for k in expected if k in reported}
    handled |= {k for k, needle in UNPARSEABLE.items() if needle in unparsed}
    upright = {k for k in UPRIGHT
               if result["grids"].get(k) and all(h > w for _, h, w in result["grids"][k])}
    recorded = {r.sample_id for r in result["repaired"]} & set(RECORDED_REPAIRS)
    return {"kinds": len(expected) + len(UPRIGHT) + len(RECORDED_REPAIRS),
            "handled": len(handled) + len(upright) + len(recorded),
            "crashes": len(result["crashes"]),
            "missed": sorted(set(expected) - handled) + sorted(set(UPRIGHT) - upright)
            + sorted(set(RECORDED_REPAIRS) - recorded)}

