"""An offline Qwen3-VL processor: Qwen's special tokens and chat template, real image/video processors.

No hub access here, so the project writes its own processor once and everything else loads it
with ``AutoProcessor.from_pretrained(path)``, exactly as it would load ``Qwen/Qwen3-VL-8B-Instruct``.
The vocabulary is the 256 byte-level symbols plus Qwen's special tokens (282 tokens): small enough
for a tiny model to learn on a CPU, while every special token and template detail matches Qwen3-VL.
"""

from __future__ import annotations

from pathlib import Path

# Qwen2/2.5/3 special tokens in id order (151643.. in the real vocabulary). The first group is
# `special` (never split, skipped on decode); the rest are ordinary added tokens, as in Qwen's files.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]

TEMPLATE_DIR = Path(__file__).parent / "templates"

# Qwen3-VL's published preprocessor settings: patch 16, merge 2 (so a visual token covers
# 32x32 pixels), temporal patch 2, mean/std 0.5, images 64k..16M pixels.
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 16, 2, 2
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 65536, 16777216


def chat_template(name: str = "qwen3_vl_instruct") -> str:
    """Qwen3-VL's chat templates: ``qwen3_vl_instruct`` or ``qwen3_vl_thinking``."""
    return (TEMPLATE_DIR / f"{name}.jinja").read_text()


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges plus Qwen's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=262144,
        clean_up_tokenization_spaces=False,
    )


def build_processor(template: str = "qwen3_vl_instruct"):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    common = dict(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE,
                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS}, **common)
    video_processor = Qwen3VLVideoProcessor(**common)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=build_byte_tokenizer(),
                            video_processor=video_processor, chat_template=chat_template(template))


def save_processor(out_dir: str | Path, template: str = "qwen3_vl_instruct"):
    processor = build_processor(template)
    processor.save_pretrained(str(out_dir))
    return processor
