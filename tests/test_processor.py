"""The offline processor behaves as Qwen3-VL's: special tokens, chat template, visual expansion."""

from __future__ import annotations

from PIL import Image

from data.processor import ADDED_TOKENS, SPECIAL_TOKENS


def test_special_tokens_are_single_ids_and_special(processor):
    tok = processor.tokenizer
    assert len(tok) == 256 + len(SPECIAL_TOKENS) + len(ADDED_TOKENS)
    for t in SPECIAL_TOKENS + ADDED_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.decode(tok.encode("héllo wörld ✓", add_special_tokens=False)) == "héllo wörld ✓"


def test_instruct_chat_template_matches_qwen3_vl():
    """Qwen3-VL Instruct: no default system prompt, vision placeholders in place, no think tags,
    'Picture N:' only with add_vision_id, images in tool turns counted too."""
    from transformers import AutoProcessor  # noqa: F401  (template is rendered by the processor)

    from data.processor import build_processor

    p = build_processor()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "And these?"}, {"type": "image"},
                                     {"type": "video"}]},
    ]
    text = p.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nAnd these?<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n")
    with_ids = p.apply_chat_template(messages, tokenize=False, add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in with_ids and "Picture 2: <|vision_start|>" in with_ids
    assert "Video 1: <|vision_start|><|video_pad|>" in with_ids
    no_system = p.apply_chat_template(messages[1:3], tokenize=False)
    assert no_system.startswith("<|im_start|>user\n") and "<think>" not in no_system


def test_image_tokens_expand_per_32px_cell_within_budget(processor):
    budget = {"size": {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}}
    for w, h in [(96, 96), (160, 96), (33, 500), (1000, 40), (300, 299), (17, 17)]:
        text = "<|vision_start|><|image_pad|><|vision_end|>x"
        out = processor(text=[text], images=[Image.new("RGB", (w, h))], images_kwargs=budget,
                        return_tensors="pt")
        t, gh, gw = out["image_grid_thw"][0].tolist()
        assert t == 1 and gh % 2 == 0 and gw % 2 == 0  # patch grid of 16 px, merged 2x2
        assert 64 * 64 <= gh * gw * 256 <= 256 * 256, (w, h)
        n_pad = int((out["input_ids"][0] == processor.image_token_id).sum())
        assert n_pad == gh * gw // 4
        assert out["pixel_values"].shape == (gh * gw, 3 * 2 * 16 * 16)
        assert int(out["mm_token_type_ids"][0].sum()) == n_pad


def test_thinking_template_renders_reasoning_like_qwen3_vl_thinking():
    """Thinking: reasoning kept (as <think> block) only after the last user query; earlier
    turns lose it; the last reply always carries a think block; generation opens one."""
    from data.processor import build_processor

    p = build_processor("qwen3_vl_thinking")
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count?"}]}
    msgs = [user, {"role": "assistant", "content": "<think>\nthree dots\n</think>\n\n3"},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "red", "reasoning_content": "all red"}]
    assert p.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Count?<|im_end|>\n"
        "<|im_start|>assistant\n3<|im_end|>\n"
        "<|im_start|>user\nColour?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nall red\n</think>\n\nred<|im_end|>\n")
    assert p.apply_chat_template([user], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n")
    plain = p.apply_chat_template([user, {"role": "assistant", "content": "3"}], tokenize=False)
    assert plain.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n3<|im_end|>\n")


def test_instruct_template_never_adds_think_tags():
    from data.processor import build_processor

    p = build_processor("qwen3_vl_instruct")
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert "<think>" not in p.apply_chat_template(msgs, tokenize=False)
    assert p.apply_chat_template(msgs[:1], tokenize=False,
                                 add_generation_prompt=True).endswith("<|im_start|>assistant\n")
