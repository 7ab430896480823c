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
}


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
    }
    repaired = [_chat("good-tiny_image", "<image>\nQ", "a dot", image="tiny.png"),
                _chat("good-images_without_tags", "What is shown?", "noise",
                      image=_png(out / "untagged.png"))]
    lines = [json.dumps(r) for r in good + repaired + list(bad.values())]
    lines.insert(3, '{"id": "bad-invalid_json_line", "conversations": [')
    raw = "\n".join(lines).encode()
    raw += b'\n{"id": "bad-non_utf8_text", "conversations": [{"from": "human", "value": "caf\xe9"}]}\n'
    (out / "train.jsonl").write_bytes(raw)
    expected = {f"bad-{kind}": kind for kind in bad}
    expected["bad-invalid_json_line"] = "invalid_json_line"
    expected["bad-non_utf8_text"] = "non_utf8_text"

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
               SourceConfig(path=str(out / "docs.jsonl"), format="pdf", name="docs", task="qa"),
               SourceConfig(path=str(out / "coco.json"), format="coco", name="boxes")]
    return sources, expected


def audit(cfg, processor) -> dict:
    """Read, plan and encode every sample of ``cfg`` (a DataConfig) under the skip policy, as a
    training run would. Returns the good ids, every bad-sample record, and the exceptions that
    escaped (crashes: a correct pipeline has none)."""
    from data.corpus import load_corpus
    from data.samples import BadSample, BadSampleLog

    log = BadSampleLog("skip")
    crashes: list[str] = []
    try:
        corpus = load_corpus(cfg, processor, log, plan=True)
    except Exception as e:  # noqa: BLE001 - counting what escapes is the point
        return {"good": [], "bad": log.records, "crashes": [f"{type(e).__name__}: {e}"]}
    good = []
    for index, sample in enumerate(corpus.samples):
        try:
            corpus.encoder_for(index).encode(sample)
            good.append(sample.id)
        except (OSError, ValueError) as e:  # what EncodedDataset skips and reports mid-run
            log.records.append(BadSample(sample.source, sample.index, sample.id,
                                         f"{type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001
            crashes.append(f"{sample.id}: {type(e).__name__}: {e}")
    return {"good": good, "bad": log.records, "crashes": crashes}

