"""``format: messages`` (data/sources/chat.py): OpenAI-style chat records with text, image paths,
file:// and base64 data URIs; bad parts and roles named; reasoning learned with the Thinking
template only."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from data.encode import SampleEncoder, VisionBudget
from data.planner import TokenPlanner
from data.samples import BadSampleLog, DataError
from data.sources import load_source
from tests.helpers.files import write_jsonl


def data_uri(color="red", size=(64, 32)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_messages_records_become_samples_that_encode(tmp_path, processor):
    Image.new("RGB", (96, 96), "blue").save(tmp_path / "a.png")
    record = {"id": "m1", "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [
            {"type": "image", "image": "a.png"},
            {"type": "image_url", "image_url": {"url": data_uri()}},
            {"type": "image_url", "image_url": f"file://{tmp_path / 'a.png'}"},
            {"type": "text", "text": "Colours?"}]},
        {"role": "assistant", "content": "blue, red, blue"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]}
    (sample,) = load_source("messages", write_jsonl(tmp_path / "m.jsonl", [record]))
    assert sample.id == "m1" and len(sample.images) == 3
    assert [p["type"] for p in sample.messages[1]["content"]] == ["image", "image", "image", "text"]

    budget = VisionBudget(64 * 64, 256 * 256)
    encoded = SampleEncoder(processor, budget).encode(sample)
    labels = encoded["labels"][encoded["labels"] != -100]
    assert processor.tokenizer.decode(labels) == "blue, red, blue<|im_end|>yes<|im_end|>"
    assert encoded["image_grid_thw"].shape[0] == 3
    assert TokenPlanner(processor, budget).plan(sample).total == len(encoded["input_ids"])


@pytest.mark.parametrize("content,reason", [
    ([{"type": "video", "video": "v.mp4"}], "video file not found"),
    ([{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}], "remote image URLs"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], "invalid base64"),
    ([{"type": "image", "image": "missing.png"}], "image file not found: missing.png"),
    ([{"type": "audio", "audio": "a.wav"}], "audio is not supported by Qwen3-VL"),
])
def test_bad_parts_are_named(tmp_path, content, reason):
    records = [{"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "a"}]},
               {"id": "bad", "messages": [{"role": "user", "content": content},
                                          {"role": "assistant", "content": "a"}]}]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    with pytest.raises(DataError) as e:
        load_source("messages", path)
    assert f"{path}: sample 1 (id bad)" in str(e.value) and reason in str(e.value)


def test_bad_roles_and_empty_replies_are_skipped_with_reasons(tmp_path):
    records = [
        {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": [{"type": "image", "image": "x.png"}]}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine"}]},
    ]
    log = BadSampleLog("skip")
    samples = load_source("messages", write_jsonl(tmp_path / "m.jsonl", records), bad=log)
    assert [s.index for s in samples] == [3]
    reasons = [r.reason for r in log.records]
    assert "role 'human' is not one of" in reasons[0]
    assert "no non-empty assistant turn" in reasons[1]
    assert "images are only read in user turns" in reasons[2]


def test_reasoning_content_is_learned_with_thinking_template_only(tmp_path, processor):
    from data.processor import build_processor

    record = {"messages": [{"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4",
                            "reasoning_content": "Two and two make four."}]}
    (sample,) = load_source("messages", write_jsonl(tmp_path / "m.jsonl", [record]))
    budget = VisionBudget()
    thinking = SampleEncoder(build_processor("qwen3_vl_thinking"), budget).encode(sample)
    learned = thinking["labels"][thinking["labels"] != -100]
    assert processor.tokenizer.decode(learned) == \
        "<think>\nTwo and two make four.\n</think>\n\n4<|im_end|>"
    instruct = SampleEncoder(processor, budget).encode(sample)
    text = processor.tokenizer.decode(instruct["input_ids"])
    assert "<think>" not in text and text.endswith("<|im_start|>assistant\n4<|im_end|>\n")


def test_listed_images_with_tags_train_with_their_visual_tokens(tmp_path, processor):
    """LLaMA-Factory / ms-swift rows (top-level ``images``, ``<image>`` tags in string content)
    used to train on the literal text "<image>" with no visual token at all."""
    Image.new("RGB", (96, 96), "blue").save(tmp_path / "a.png")
    record = {"messages": [{"role": "user", "content": "<image>Colour?"},
                           {"role": "assistant", "content": "blue"}],
              "images": ["a.png"], "system": "Answer in one word."}
    (sample,) = load_source("messages", write_jsonl(tmp_path / "m.jsonl", [record]))
    budget = VisionBudget(64 * 64, 256 * 256)
    encoded = SampleEncoder(processor, budget).encode(sample)
    assert encoded["image_grid_thw"].shape[0] == 1
    n_pad = int((encoded["input_ids"] == processor.image_token_id).sum())
    assert n_pad == int(encoded["image_grid_thw"].prod()) // 4 > 0
    text = processor.tokenizer.decode(encoded["input_ids"])
    assert "<image>" not in text and text.startswith("<|im_start|>system\nAnswer in one word.")
    assert TokenPlanner(processor, budget).plan(sample).total == len(encoded["input_ids"])


def test_qwen_data_uri_without_subtype_is_an_image(tmp_path):
    uri = data_uri().replace("data:image/png;", "data:image;")
    record = {"messages": [{"role": "user", "content": [{"type": "image", "image": uri},
                                                        {"type": "text", "text": "Colour?"}]},
                           {"role": "assistant", "content": "red"}]}
    (sample,) = load_source("messages", write_jsonl(tmp_path / "m.jsonl", [record]))
    assert sample.images == [uri]
