"""``python -m data stats | show | prepare`` on a two-source config with deliberately bad records:
exit codes, the numbers in stats.json against a direct planner count, the label span and the
drawn boxes of show, and a prepared cache that reads back equal to fresh encoding."""

from __future__ import annotations

import bisect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data.__main__ import load_tool_config, main
from data.boxes import box_from_relative
from data.config import DataConfig, VisionBudget
from data.tools.synthetic import write_grey_video
from data.corpus import load_corpus
from data.encode import SampleEncoder
from data.planner import TokenPlanner
from data.prepared import PixelCodec, PreparedDataset, StaleCacheError, stale_reasons
from data.tools.show import (MARK_COLOR, Mark, answer_marks, draw_marks, model_view_images,
                       render_text)
from data.sources import load_llava_json

BUDGET = {"min_pixels": 64 * 64, "max_pixels": 256 * 256, "num_frames": 4}
MAX_SEQ_LEN, MAX_VISUAL = 400, 50
LONG_ANSWER = "word " * 100  # about 500 byte-level tokens: over MAX_SEQ_LEN


def _record(sample_id, image, question, answer, media="image"):
    return {"id": sample_id, media: image,
            "conversations": [{"from": "human", "value": question},
                              {"from": "gpt", "value": answer}]}


def _write_clip(path, n_frames=31, fps=10):
    """A 64x48 video whose frame i is a flat grey of level 8 * i."""
    write_grey_video(path, n_frames, fps)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus, tiny):
    """``shapes`` (8 corpus samples + edge cases + bad records) and ``eval`` (the corpus eval
    split), in a training config whose model.path is the tiny dense checkpoint."""
    root = tmp_path_factory.mktemp("tools")
    records = json.loads(corpus["train"].read_text())[:8]
    for r in records:
        r["image"] = str(corpus["train"].parent / r["image"])
    Image.new("RGB", (600, 400), "navy").save(root / "big.png")      # over max_pixels
    Image.new("RGB", (40, 40), "olive").save(root / "small.png")     # under min_pixels
    (root / "empty.png").write_bytes(b"")                             # unreadable
    _write_clip(root / "clip.mp4")
    records += [
        _record("big", "big.png", "<image>\nWhat colour?", "navy"),
        _record("small", "small.png", "<image>\nWhat colour?", "olive"),
        _record("long", records[0]["image"], "<image>\nSay it.", LONG_ANSWER),
        _record("clip", "clip.mp4", "<video>\nWhat happens?", "A fade.", media="video"),
        _record("bad-missing", "nowhere.png", "<image>\nWhat?", "x"),
        _record("bad-tags", "small.png", "<image><image>\nWhat?", "x"),
        _record("bad-empty", "empty.png", "<image>\nWhat?", "x"),
    ]
    shapes = root / "shapes.json"
    shapes.write_text(json.dumps(records))
    config = {"model": {"path": str(tiny["dense"])},
              "data": {"sources": [{"path": str(shapes), "name": "shapes"},
                                   {"path": str(corpus["eval"]), "name": "eval"}],
                       "vision": BUDGET, "max_seq_len": MAX_SEQ_LEN,
                       "max_visual_tokens": MAX_VISUAL, "on_bad_sample": "skip",
                       "max_bad_fraction": 0.5},
              "train": {"max_steps": 3}}
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": path, "shapes": shapes, "eval": corpus["eval"],
            "model": str(tiny["dense"]), "corpus": corpus}


def _nearest_rank(values, p):
    ordered = sorted(values)
    return ordered[max(0, -(-p * len(ordered) // 100) - 1)]


def test_stats_numbers_match_a_direct_planner_count(workspace, processor):
    out = workspace["root"] / "stats"
    assert main(["stats", str(workspace["config"]), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "stats.json").read_text())
    planner = TokenPlanner(processor, VisionBudget(**BUDGET))

    readable = [s for s in load_llava_json(workspace["shapes"], bad=_skip()) if s.id != "bad-empty"]
    totals = [planner.plan(s).total for s in readable]
    visuals = [planner.plan(s).visual_tokens for s in readable]
    shapes = doc["sources"]["shapes"]
    assert shapes["samples"] == len(readable) == 12
    assert shapes["bad"] == 3 and sum(shapes["bad_per_reason"].values()) == 3
    assert "image file not found" in shapes["bad_per_reason"]
    for p in (50, 90, 99):
        assert shapes["tokens"]["total"][f"p{p}"] == _nearest_rank(totals, p)
    assert shapes["tokens"]["total"]["max"] == max(totals)
    assert shapes["tokens"]["total"]["sum"] == sum(totals)
    assert shapes["tokens"]["visual"]["sum"] == sum(visuals)
    # "long" is over max_seq_len in its text: dropped; "big" (54 visual tokens) is shrunk.
    assert shapes["budget_hits"] == {
        "samples_over_max_seq_len": 1, "samples_over_max_visual_tokens": 1,
        "samples_shrunk": 1, "samples_dropped_over_budget": 1, "images": 11,
        "images_clamped_by_max_pixels": 1, "images_raised_by_min_pixels": 1}
    assert shapes["images_per_sample"]["samples_with"] == {"0": 1, "1": 11}
    assert shapes["videos_per_sample"]["samples_with"] == {"0": 11, "1": 1}

    n_eval = len(load_llava_json(workspace["eval"]))
    assert doc["sources"]["eval"]["samples"] == n_eval and doc["sources"]["eval"]["bad"] == 0
    assert doc["total"]["samples"] == 12 + n_eval and doc["total"]["bad"] == 3
    bad = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
    assert sorted(b["id"] for b in bad) == ["bad-empty", "bad-missing", "bad-tags"]
    assert all(b["file"] == str(workspace["shapes"]) and b["reason"] for b in bad)
    for kind in ("text", "visual", "total"):
        with Image.open(out / f"hist_{kind}_tokens.png") as im:
            assert im.size[0] > 300 and im.size[1] > 200
    # More bad samples than data.max_bad_fraction allows: training would stop, so exit 1.
    assert main(["stats", str(workspace["config"]), "data.max_bad_fraction=0.05", "--out",
                 str(out), "--no-progress", "--limit", "4"]) == 1
    limited = json.loads((out / "stats.json").read_text())
    assert limited["sources"]["shapes"]["samples"] == 4


def test_show_marks_the_answer_and_draws_the_box_on_the_object(workspace, processor):
    records = json.loads(workspace["eval"].read_text())
    grounding = next(r for r in records if r["id"].startswith("eval-grounding"))
    out = workspace["root"] / "show"
    argv = ["show", str(workspace["config"]), "--out", str(out), "--ids",
            f"{grounding['id']},big,clip", "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((out / "show.json").read_text())
    assert [e["id"] for e in doc["shown"]] == [grounding["id"], "big", "clip"]
    entry = doc["shown"][0]
    text = Path(entry["text_file"]).read_text()
    answer = grounding["conversations"][1]["value"]
    body = text.split("\n\n", 1)[1]  # after the header lines
    assert f"[[{answer}<|im_end|>]]" in body and body.count("[[") == 1 == body.count("]]")
    assert "<|image_pad|>x9 (grid 1x6x6)" in text  # 96x96 px: 6x6 patches, 9 merged tokens
    # 600x400 px would take 288x192 px (54 tokens) of the 256x256 budget, over
    # max_visual_tokens 50: shown shrunk, as training gets it.
    big = doc["shown"][1]
    (run,) = re.findall(r"<\|image_pad\|>x(\d+) \(grid 1x(\d+)x(\d+)\)",
                        Path(big["text_file"]).read_text())
    tokens, grid_h, grid_w = map(int, run)
    assert tokens == grid_h * grid_w // 4 == big["visual_tokens"] <= MAX_VISUAL < 54
    assert big["images"][0]["model_size"] == [grid_w * 16, grid_h * 16]
    assert abs(grid_w / grid_h - 1.5) < 0.25  # aspect ratio kept

    # The video: 4 frames (2 temporal patches), one run of 4 tokens per timestamp; the
    # contact sheet shows the frames the model gets (grey levels 0, 80, 160, 240).
    clip = doc["shown"][2]
    clip_text = Path(clip["text_file"]).read_text()
    assert "<|video_pad|>x4 (grid 2x4x4, step 1/2)" in clip_text
    assert "<|video_pad|>x4 (grid 2x4x4, step 2/2)" in clip_text
    with Image.open(clip["images"][0]["file"]) as sheet:
        frames = np.asarray(sheet.convert("L")).reshape(64, 4, 64).mean(axis=(0, 2))
    assert np.allclose(frames, [0, 80, 160, 240], atol=6), frames

    with Image.open(entry["images"][0]["file"]) as im:
        view = np.asarray(im.convert("RGB"))
    height, width = view.shape[:2]
    (box,) = [m["coords"] for m in entry["marks"]]
    x1, y1, x2, y2 = (round(v) for v in box_from_relative(box, width, height))
    assert tuple(view[(y1 + y2) // 2, x1]) == MARK_COLOR  # left edge of the outline
    assert tuple(view[y1, (x1 + x2) // 2]) == MARK_COLOR  # top edge
    assert tuple(view[(y1 + y2) // 2, x1 - 3]) != MARK_COLOR  # nothing outside it
    colours, counts = np.unique(view.reshape(-1, 3), axis=0, return_counts=True)
    by_count = [tuple(c) for c in colours[np.argsort(-counts)]]
    shape_colour = next(c for c in by_count if c not in ((255, 255, 255), MARK_COLOR))
    ys, xs = np.nonzero((view == shape_colour).all(axis=2))
    assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2  # object inside

    assert main(["show", str(workspace["config"]), "--out", str(out), "--ids", "no-such-id"]) == 1
    assert main(["show", str(workspace["config"]), "--out", str(out), "--source", "nope"]) == 2


def test_model_view_is_the_image_the_processor_encoded(workspace, processor):
    """Unpatchifying pixel_values gives back the original pixels when the budget keeps the
    size (96x96 grid image, 160x96 page): the rebuilt view is what the model sees."""
    encoder = SampleEncoder(processor, VisionBudget(**BUDGET))
    samples = load_llava_json(workspace["corpus"]["train"])
    for task in ("grounding", "doc"):
        sample = next(s for s in samples if s.meta["task"] == task)
        (view,) = model_view_images(encoder.encode(sample), processor)
        with Image.open(sample.images[0]) as original:
            assert np.array_equal(np.asarray(view), np.asarray(original.convert("RGB")))


def test_render_text_collapses_pads_and_brackets_labels(processor):
    tok = processor.tokenizer
    pad = processor.image_token_id
    ids = tok.encode("ab", add_special_tokens=False) + [pad] * 4 + tok.encode("cd", add_special_tokens=False)
    labels = [-100] * 6 + ids[6:]
    assert render_text(ids, labels, tok, {pad: [(1, 4, 4)]}) == "ab<|image_pad|>x4 (grid 1x4x4)[[cd]]"
    marks = answer_marks('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, {"point_2d": [5, 6]}]\n```')
    assert [(m.kind, m.coords, m.label) for m in marks] == [("box", [1, 2, 3, 4], "cat"),
                                                           ("point", [5, 6], None)]
    # A point at relative (250, 500) of a 400x200 view (no zoom at this size) lands at (100, 100).
    view = np.asarray(draw_marks(Image.new("RGB", (400, 200), "white"), [Mark("point", [250, 500])]))
    assert tuple(view[100, 100]) == MARK_COLOR and tuple(view[20, 20]) == (255, 255, 255)


def test_prepare_round_trip_equals_fresh_encoding(workspace, processor):
    out = workspace["root"] / "prepared"
    argv = ["prepare", str(workspace["config"]), "--out", str(out), "--num-proc", "2",
            "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    bad = {json.loads(line)["id"]: json.loads(line)
           for line in (out / "bad_samples.jsonl").read_text().splitlines()}
    # Missing file, tag mismatch, unreadable image, and text over max_seq_len (cannot shrink);
    # the 600x400 image is shrunk under max_visual_tokens and kept.
    assert set(bad) == {"bad-missing", "bad-tags", "bad-empty", "long"}
    assert "max_seq_len" in bad["long"]["reason"]
    assert all(b["file"] == str(workspace["shapes"]) and b["index"] >= 8 for b in bad.values())

    cfg, model = load_tool_config(str(workspace["config"]), [], None)
    prepared = PreparedDataset(out, cfg, model)
    n_eval = len(load_llava_json(workspace["eval"]))
    assert len(prepared) == manifest["counts"]["samples"] == 8 + 3 + n_eval  # big, small, clip
    assert manifest["counts"]["bad"] == 4 and manifest["processor_files"]
    assert manifest["counts"]["per_source"]["shapes"]["shrunk"] == 1
    # Every sample's pixels are kept as uint8 (images: an eighth of the float32 bytes; the
    # clip's video frames: a quarter), and read back exactly (below).
    assert manifest["counts"]["image_samples_stored_as"] == {"uint8": 8 + 3 + n_eval - 1,
                                                             "float32": 0}
    assert manifest["counts"]["video_samples_stored_as"] == {"uint8": 1, "float32": 0}

    # Fresh encoding of the samples as training gets them (the shrunk one at its own budget).
    corpus = load_corpus(cfg, processor, _skip(), plan=True)
    fresh_by_id = {s.id: (s, corpus.encoders[bisect.bisect_right(corpus.offsets, i) - 1])
                   for i, s in enumerate(corpus.samples)}
    assert {prepared.info(i)["id"] for i in range(len(prepared))} == set(fresh_by_id)
    kinds = set()
    for i in range(len(prepared)):
        sample, encoder = fresh_by_id[prepared.info(i)["id"]]
        loaded, fresh = prepared[i], encoder.encode(sample)
        kinds.update(k for k in fresh if k.startswith("pixel_values"))
        assert loaded.keys() == fresh.keys()
        for key in fresh:
            assert loaded[key].dtype == fresh[key].dtype and torch.equal(loaded[key], fresh[key]), key
    assert kinds == {"pixel_values", "pixel_values_videos"}

    assert stale_reasons(out, cfg, model) == []
    changed = load_tool_config(str(workspace["config"]), ["data.max_seq_len=512"], None)[0]
    assert stale_reasons(out, changed, model) == ["data config differs in: max_seq_len"]
    with pytest.raises(StaleCacheError, match="max_seq_len"):
        PreparedDataset(out, changed, model)


def test_image_pixels_are_stored_as_uint8_only_when_that_is_exact(processor):
    codec = PixelCodec.of(processor.image_processor, repeated=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8))
    values = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    packed = codec.pack(values)
    assert packed.dtype == np.uint8 and packed.nbytes * 8 == values.numel() * values.element_size()
    assert torch.equal(codec.unpack(packed), values)
    # Floats no uint8 image gives (or two different frames): the cache keeps the floats.
    assert codec.pack(values + 1e-3) is None
    frames = values.clone().view(len(values), 3, codec.temporal, -1)
    frames[:, :, 1] = -frames[:, :, 1]
    assert codec.pack(frames.view(len(values), -1)) is None
    # A video's two frames of a patch differ: its codec keeps both (a quarter of the bytes).
    video = PixelCodec.of(processor.video_processor, repeated=False)
    both = frames.view(len(values), -1)
    assert torch.equal(video.unpack(video.pack(both)), both)


def test_data_section_config_and_config_errors(workspace, tmp_path):
    section = yaml.safe_load(workspace["config"].read_text())["data"]
    section["sources"] = section["sources"][1:]
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(section))
    cfg, model = load_tool_config(str(path), ["max_seq_len=333"], workspace["model"])
    assert isinstance(cfg, DataConfig) and cfg.max_seq_len == 333 and model == workspace["model"]
    out = str(tmp_path / "out")
    assert main(["stats", str(path), "--out", out, "--no-progress"]) == 2  # no --model
    assert main(["stats", str(path), "--model", workspace["model"], "--out", out,
                 "data.no_such_key=1", "--no-progress"]) == 2
    assert main(["stats", str(path), "--model", str(tmp_path / "missing"), "--out", out]) == 2
    shutil.rmtree(out, ignore_errors=True)


def _skip():
    from data.samples import BadSampleLog

    return BadSampleLog("skip")
