"""Token planning: exact text + visual token counts of a sample before any pixel is decoded.

Image sizes come from file headers (PIL opens lazily), the resize is transformers' own
``smart_resize`` for the checkpoint's patch and merge sizes, and text is counted by rendering
the chat template with one placeholder per image. The counts equal the length of what
``SampleEncoder.encode`` produces (tested against the processor on randomised sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from data.encode import VisionBudget
from data.images import image_size


@dataclass
class Plan:
    text_tokens: int
    visual_tokens: int

    @property
    def total(self) -> int:
        return self.text_tokens + self.visual_tokens


def image_grid(height: int, width: int, budget: VisionBudget, patch_size: int = 16,
               merge_size: int = 2) -> tuple[int, int, int]:
    """(t, h, w) patch grid the image processor will produce for an image of this size."""
    h, w = smart_resize(height, width, factor=patch_size * merge_size,
                        min_pixels=budget.min_pixels, max_pixels=budget.max_pixels)
    return 1, h // patch_size, w // patch_size


def processor_grid(processor, height: int, width: int, budget: VisionBudget) -> tuple[int, int, int]:
    """The (t, h, w) grid the real image processor produces (decodes a blank image): the
    reference that ``image_grid`` is checked against in tests and ``scripts/bench_data.py``."""
    from PIL import Image

    out = processor.image_processor(images=[Image.new("RGB", (width, height))],
                                    return_tensors="pt", **budget.images_kwargs())
    return tuple(out["image_grid_thw"][0].tolist())


def image_tokens(height: int, width: int, budget: VisionBudget, patch_size: int = 16,
                 merge_size: int = 2) -> int:
    t, h, w = image_grid(height, width, budget, patch_size, merge_size)
    return t * h * w // merge_size**2


class TokenPlanner:
    def __init__(self, processor, budget: VisionBudget):
        self.processor, self.budget = processor, budget
        ip = processor.image_processor
        self.patch_size, self.merge_size = ip.patch_size, ip.merge_size

    def plan(self, sample) -> Plan:
        text = self.processor.apply_chat_template(sample.messages, tokenize=False)
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        visual = sum(image_tokens(*image_size(p), self.budget, self.patch_size, self.merge_size)
                     for p in sample.images)
        # The rendered text holds one <|image_pad|> per image; the processor expands it.
        return Plan(text_tokens=n_text - len(sample.images), visual_tokens=visual)
