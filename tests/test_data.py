"""Sources, samples and encoding: what the trainer is fed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from data.encode import IGNORE_INDEX, SampleEncoder, SampleTooLong, VisionBudget, collate
from data.samples import BadSampleLog, DataError
from data.sources import load_llava_json
from tests.helpers.files import write_json


def test_missing_image_error_names_file_index_and_path(corpus, tmp_path):
    records = json.loads(corpus["train"].read_text())[:3]
    records[1]["image"] = "images/train/does-not-exist.png"
    path = write_json(corpus["train"].parent / "broken.json", records)
    with pytest.raises(DataError) as e:
        load_llava_json(path)
    msg = str(e.value)
    assert str(path) in msg and "sample 1" in msg and "does-not-exist.png" in msg
    assert "on_bad_sample=skip" in msg

    log = BadSampleLog("skip")
    samples = load_llava_json(path, bad=log)
    assert [s.index for s in samples] == [0, 2]
    assert len(log.records) == 1 and log.records[0].index == 1
    assert "does-not-exist.png" in log.records[0].reason


def test_image_tags_repaired_or_rejected(corpus, tmp_path):
    image = str(corpus["train"].parent / json.loads(corpus["train"].read_text())[0]["image"])
    untagged = {"image": image, "conversations": [{"from": "human", "value": "What?"},
                                                  {"from": "gpt", "value": "red"}]}
    too_many = {"image": image, "conversations": [{"from": "human", "value": "<image><image>?"},
                                                  {"from": "gpt", "value": "red"}]}
    no_answer = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]}
    path = write_json(tmp_path / "tags.json", [untagged, too_many, no_answer])
    log = BadSampleLog("skip")
    (sample,) = load_llava_json(path, bad=log)
    assert sample.messages[0]["content"][0] == {"type": "image"}
    assert [r.index for r in log.records] == [1, 2]
    assert "2 <image> tags but 1 images" in log.records[0].reason


def test_jsonl_bad_lines_are_named_and_skipped(corpus, tmp_path):
    good = json.dumps(json.loads(corpus["train"].read_text())[0]).encode()
    path = tmp_path / "data.jsonl"
    path.write_bytes(good + b"\n{not json\n" + good.replace(b"What", b"Wh\xe4t") + b"\n" + good + b"\n")
    with pytest.raises(DataError, match=r"data.jsonl: sample 1: line 2: invalid JSON"):
        load_llava_json(path, image_root=corpus["train"].parent)
    log = BadSampleLog("skip")
    samples = load_llava_json(path, image_root=corpus["train"].parent, bad=log)
    assert [s.index for s in samples] == [0, 3]  # the index of a JSONL record is its line - 1
    assert [str(r).split(": ", 1)[1] for r in log.records] == [
        "sample 1: line 2: invalid JSON (Expecting property name enclosed in double quotes)",
        "sample 2: line 3: not valid UTF-8 (byte %d of the line)" % (good.index(b"What") + 2)]


def test_labels_cover_only_assistant_replies(processor, corpus, tmp_path):
    image = next(r["image"] for r in json.loads(corpus["train"].read_text()) if r["task"] == "vqa")
    record = {"id": "multi", "image": image, "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "a circle"}]}
    shutil.copytree(corpus["train"].parent / "images", tmp_path / "images")
    (sample,) = load_llava_json(write_json(tmp_path / "multi.json", [record]))
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 256 * 256))
    ex = enc.encode(sample)
    labels = ex["labels"]
    kept = labels[labels != IGNORE_INDEX]
    assert processor.tokenizer.decode(kept) == "red<|im_end|>a circle<|im_end|>"
    # every labelled position carries the input token itself (the model shifts internally)
    mask = labels != IGNORE_INDEX
    assert torch.equal(labels[mask], ex["input_ids"][mask])
    n_pad = int((ex["input_ids"] == processor.image_token_id).sum())
    assert n_pad == int(ex["image_grid_thw"].prod()) // 4 == 9  # 96x96 -> 3x3 merged cells


def test_too_long_sample_is_rejected_not_truncated(processor, corpus):
    sample = load_llava_json(corpus["train"])[0]
    with pytest.raises(SampleTooLong, match="max_seq_len 20"):
        SampleEncoder(processor, VisionBudget(), max_seq_len=20).encode(sample)


def test_collate_pads_right_for_training_and_left_for_generation(processor, corpus):
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 256 * 256))
    samples = load_llava_json(corpus["train"])[:3]
    examples = [enc.encode(s) for s in samples]
    pad = processor.tokenizer.pad_token_id
    right = collate(examples, pad)
    longest = max(len(e["input_ids"]) for e in examples)
    assert right["input_ids"].shape == (3, longest)
    for row, e in zip(range(3), examples):
        n = len(e["input_ids"])
        assert torch.equal(right["input_ids"][row, :n], e["input_ids"])
        assert (right["labels"][row, n:] == IGNORE_INDEX).all()
        assert (right["attention_mask"][row, n:] == 0).all()
    left = collate([enc.encode_prompt(s) for s in samples], pad, padding_side="left")
    newline = processor.tokenizer.encode("\n", add_special_tokens=False)[0]
    assert (left["input_ids"][:, -1] == newline).all()  # every prompt ends "assistant\n"
    assert (left["attention_mask"][:, -1] == 1).all()
    assert right["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in examples)


def test_thinking_reply_is_learned_with_its_reasoning(corpus, tmp_path):
    from data.processor import build_processor

    shutil.copytree(corpus["train"].parent / "images", tmp_path / "images")
    image = next(r["image"] for r in json.loads(corpus["train"].read_text()) if r["task"] == "vqa")
    record = {"image": image, "conversations": [
        {"from": "human", "value": "<image>\nColour?"},
        {"from": "gpt", "value": "<think>\nThe shapes are red.\n</think>\n\nred"}]}
    (sample,) = load_llava_json(write_json(tmp_path / "think.json", [record]))
    thinking = build_processor("qwen3_vl_thinking")
    ex = SampleEncoder(thinking, VisionBudget(64 * 64, 256 * 256)).encode(sample)
    kept = ex["labels"][ex["labels"] != IGNORE_INDEX]
    assert thinking.tokenizer.decode(kept) == "<think>\nThe shapes are red.\n</think>\n\nred<|im_end|>"


def test_bad_samples_are_counted_per_reason_and_bounded(corpus, tmp_path):
    records = json.loads(corpus["train"].read_text())[:10]
    for i in (1, 4, 7):
        records[i]["image"] = f"images/train/gone-{i}.png"
    records[2]["conversations"][0]["value"] = "<image><image>\nTwo?"
    path = write_json(corpus["train"].parent / "mostly_bad.json", records)
    log = BadSampleLog("skip")
    samples = load_llava_json(path, bad=log)
    assert len(samples) == 6
    assert log.counts() == {"image file not found": 3, "N <image> tags but N images": 1}
    log.check_fraction(len(samples), 0.5)  # 40% bad: under the bound, carries on
    with pytest.raises(DataError) as e:
        log.check_fraction(len(samples), 0.2)
    msg = str(e.value)
    assert "4 of 10 samples are bad" in msg and "3  image file not found" in msg
    assert "data.max_bad_fraction=0.2" in msg and "gone-1.png" in msg
