"""``python -m data stats | show | prepare`` on a two-source config with deliberately bad records:
exit codes, the numbers in stats.json against a direct planner count, the label span and the
drawn boxes of show, and a prepared cache that reads back equal to fresh encoding."""

from __future__ import annotations

import json
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
from data.encode import SampleEncoder
from data.planner import TokenPlanner
from data.prepare import PreparedDataset, StaleCacheError, stale_reasons
from data.show import MARK_COLOR, answer_marks, model_view_images, render_text
from data.sources import load_llava_json

BUDGET = {"min_pixels": 64 * 64, "max_pixels": 256 * 256}
MAX_SEQ_LEN, MAX_VISUAL = 400, 50
LONG_ANSWER = "word " * 100  # about 500 byte-level tokens: over MAX_SEQ_LEN


def _record(sample_id, image, question, answer):
    return {"id": sample_id, "image": image,
            "conversations": [{"from": "human", "value": question},
                              {"from": "gpt", "value": answer}]}


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
    records += [
        _record("big", "big.png", "<image>\nWhat colour?", "navy"),
        _record("small", "small.png", "<image>\nWhat colour?", "olive"),
        _record("long", records[0]["image"], "<image>\nSay it.", LONG_ANSWER),
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
    assert shapes["samples"] == len(readable) == 11
    assert shapes["bad"] == 3 and sum(shapes["bad_per_reason"].values()) == 3
    assert "image file not found" in shapes["bad_per_reason"]
    for p in (50, 90, 99):
        assert shapes["tokens"]["total"][f"p{p}"] == _nearest_rank(totals, p)
    assert shapes["tokens"]["total"]["max"] == max(totals)
    assert shapes["tokens"]["total"]["sum"] == sum(totals)
    assert shapes["tokens"]["visual"]["sum"] == sum(visuals)
    assert shapes["budget_hits"] == {
        "samples_over_max_seq_len": 1, "samples_over_max_visual_tokens": 1, "images": 11,
        "images_clamped_by_max_pixels": 1, "images_raised_by_min_pixels": 1}
    assert shapes["images_per_sample"]["samples_with"] == {"1": 11}

    n_eval = len(load_llava_json(workspace["eval"]))
    assert doc["sources"]["eval"]["samples"] == n_eval and doc["sources"]["eval"]["bad"] == 0
    assert doc["total"]["samples"] == 11 + n_eval and doc["total"]["bad"] == 3
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
            f"{grounding['id']},big", "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((out / "show.json").read_text())
    assert [e["id"] for e in doc["shown"]] == [grounding["id"], "big"]
    entry = doc["shown"][0]
    text = Path(entry["text_file"]).read_text()
    answer = grounding["conversations"][1]["value"]
    body = text.split("\n\n", 1)[1]  # after the header lines
    assert f"[[{answer}<|im_end|>]]" in body and body.count("[[") == 1 == body.count("]]")
    assert "<|image_pad|>x9 (grid 1x6x6)" in text  # 96x96 px: 6x6 patches, 9 merged tokens
    big = Path(doc["shown"][1]["text_file"]).read_text()
    # 600x400 px scaled into 256x256 px of area: 288x192 (sides floored to multiples of 32)
    assert "<|image_pad|>x54 (grid 1x12x18)" in big

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


def test_prepare_round_trip_equals_fresh_encoding(workspace, processor):
    out = workspace["root"] / "prepared"
    argv = ["prepare", str(workspace["config"]), "--out", str(out), "--num-proc", "2",
            "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    bad = {json.loads(line)["id"]: json.loads(line)
           for line in (out / "bad_samples.jsonl").read_text().splitlines()}
    # Read-time: missing file, tag mismatch. Encode-time: unreadable image, too long, and over
    # data.max_visual_tokens (the 600x400 image: 54 visual tokens).
    assert set(bad) == {"bad-missing", "bad-tags", "bad-empty", "long", "big"}
    assert "max_seq_len" in bad["long"]["reason"] and "max_visual_tokens" in bad["big"]["reason"]
    assert all(b["file"] == str(workspace["shapes"]) and b["index"] >= 8 for b in bad.values())

    cfg, model = load_tool_config(str(workspace["config"]), [], None)
    prepared = PreparedDataset(out, cfg, model)
    n_eval = len(load_llava_json(workspace["eval"]))
    assert len(prepared) == manifest["counts"]["samples"] == 8 + 1 + n_eval  # + the small image
    assert manifest["counts"]["bad"] == 5 and manifest["processor_files"]

    encoder = SampleEncoder(processor, VisionBudget(**BUDGET), MAX_SEQ_LEN)
    samples = {s.id: s for path in (workspace["shapes"], workspace["eval"])
               for s in load_llava_json(path, bad=_skip())}
    for i in range(len(prepared)):
        loaded, fresh = prepared[i], encoder.encode(samples[prepared.info(i)["id"]])
        assert loaded.keys() == fresh.keys()
        for key in fresh:
            assert loaded[key].dtype == fresh[key].dtype and torch.equal(loaded[key], fresh[key]), key

    assert stale_reasons(out, cfg, model) == []
    changed = load_tool_config(str(workspace["config"]), ["data.max_seq_len=512"], None)[0]
    assert stale_reasons(out, changed, model) == ["data config differs in: max_seq_len"]
    with pytest.raises(StaleCacheError, match="max_seq_len"):
        PreparedDataset(out, changed, model)


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
