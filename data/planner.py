"""Token planning: exact text + visual token counts of a sample before any pixel is decoded.

Image sizes come from file headers (PIL opens lazily), the resize is transformers' own
``smart_resize`` for the checkpoint's patch and merge sizes, and text is counted by rendering
the chat template with one placeholder per image or video. A video's frame count, indices and
frame size come from its container header (``data.media.video.plan``); it expands to one
``<t.t seconds><|vision_start|>...<|vision_end|>`` group per temporal patch, and the timestamp
text is counted with the tokenizer. The counts equal the length of what
``SampleEncoder.encode`` produces (tested against the processor on randomised sizes and video
shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from data.media import video as video_lib
from data.encode import VisionBudget
from data.media.images import image_size


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


def processor_video_tokens(processor, info: video_lib.VideoInfo, budget: VisionBudget,
                           ref: video_lib.VideoRef | None = None) -> tuple[int, int]:
    """(text tokens, visual tokens) the real processor gives one video: blank frames at the
    header's size, at the indices ``data.media.video`` samples, with their ``VideoMetadata``, resized
    by the processor itself. The reference ``video_tokens`` is checked against; text tokens
    cover the timestamps and the per-patch ``<|vision_start|>``/``<|vision_end|>`` (the
    ``<|video_pad|>`` placeholder itself is not counted)."""
    import torch
    from transformers.video_utils import VideoMetadata

    ref = ref or video_lib.VideoRef("reference.mp4")
    n = video_lib.frame_count(info, budget, ref, processor.video_processor.temporal_patch_size)
    metadata = VideoMetadata(total_num_frames=info.total_frames, fps=info.fps, width=info.width,
                             height=info.height,
                             frames_indices=list(video_lib.frame_indices(info.total_frames, n)))
    frames = torch.zeros((n, 3, info.height, info.width), dtype=torch.uint8)
    out = processor(text=[processor.video_token], videos=[frames], return_tensors="pt",
                    videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False,
                                   "cap_pixels_per_frame": False, "input_data_format": "channels_first",
                                   **video_lib.video_size_kwargs(n, budget)})
    ids = out["input_ids"][0]
    visual = int((ids == processor.video_token_id).sum())
    return len(ids) - visual, visual


def image_tokens(height: int, width: int, budget: VisionBudget, patch_size: int = 16,
                 merge_size: int = 2) -> int:
    t, h, w = image_grid(height, width, budget, patch_size, merge_size)
    return t * h * w // merge_size**2


class TokenPlanner:
    def __init__(self, processor, budget: VisionBudget):
        self.processor, self.budget = processor, budget
        ip = processor.image_processor
        self.patch_size, self.merge_size = ip.patch_size, ip.merge_size
        self.temporal_patch_size = processor.video_processor.temporal_patch_size
        self._timestamp_tokens: dict[str, int] = {}

    def plan(self, sample) -> Plan:
        if sample.vision_budget is not None and sample.vision_budget != self.budget:
            return TokenPlanner(self.processor, sample.vision_budget).plan(sample)
        text = self.processor.apply_chat_template(sample.messages, tokenize=False)
        n_text = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        visual = sum(image_tokens(*image_size(p), self.budget, self.patch_size, self.merge_size)
                     for p in sample.images)
        # The rendered text holds one <|image_pad|> / <|video_pad|> per image / video; the
        # processor expands each.
        # Each video also loses its outer <|vision_start|>/<|vision_end|> (see data/encode.py).
        n_text -= len(sample.images) + 3 * len(sample.videos)
        for ref in getattr(sample, "videos", ()):
            video_text, video_visual = self.video_tokens(video_lib.probe(ref), ref)
            n_text += video_text
            visual += video_visual
        return Plan(text_tokens=n_text, visual_tokens=visual)

    def video_tokens(self, info: video_lib.VideoInfo, ref: video_lib.VideoRef) -> tuple[int, int]:
        """(text tokens, visual tokens) of one video, from its header facts: per temporal patch
        a ``<t.t seconds>`` timestamp, ``<|vision_start|>``, the patch's visual tokens and
        ``<|vision_end|>`` (the layout of transformers' Qwen3VLProcessor)."""
        frame_plan = video_lib.plan(info, self.budget, ref, self.patch_size, self.merge_size,
                                    self.temporal_patch_size)
        t, h, w = frame_plan.grid(self.patch_size, self.temporal_patch_size)
        text = sum(self._count(f"<{seconds:.1f} seconds>") + 2
                   for seconds in frame_plan.timestamps(self.temporal_patch_size))
        return text, t * h * w // self.merge_size**2

    def _count(self, text: str) -> int:
        if text not in self._timestamp_tokens:
            ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._timestamp_tokens[text] = len(ids)
        return self._timestamp_tokens[text]
