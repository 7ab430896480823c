"""The encode stage: a ``Sample`` becomes model inputs (ids, labels, pixels, grid sizes).

The conversation is rendered with the checkpoint's own chat template and tokenised by its own
processor, so visual placeholders expand exactly as the processor does for that checkpoint.
Images are fitted into the configured pixel budget (sides multiples of 32 for Qwen3-VL) by the
processor's resize (a JPEG many times larger than that size is decoded at a reduced scale and
fitted by ``load_image``: same size, far less memory). Videos are sampled and resized by ``data.media.video`` (the budget's fps / frame /
pixel limits) and reach the processor with their metadata, which renders the frame timestamps.
Labels keep only assistant replies (and their closing ``<|im_end|>``).
"""

from __future__ import annotations

import torch

from data.config import VisionBudget  # noqa: F401  (re-exported: the encoder's budget)
from data.media import video as video_lib
from data.media.images import image_size, load_image

IGNORE_INDEX = -100
# Key of an encoded example listing the repairs made to use the sample (e.g. video frames that
# failed to decode, filled); present only when there were some. Consumers pop it and report it.
REPAIRS = "repairs"
VIDEO_PAD = "<|video_pad|>"
VIDEO_SLOT = "<|vision_start|>" + VIDEO_PAD + "<|vision_end|>"  # what the chat template writes
# (pixels, grid) tensors of each visual kind; batches concatenate them in sample order
VISUAL_KEYS = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))


class SampleTooLong(ValueError):
    pass


class SampleEncoder:
    def __init__(self, processor, budget: VisionBudget, max_seq_len: int = 4096):
        self.processor = processor
        self.budget = budget
        self.max_seq_len = max_seq_len
        tok = processor.tokenizer
        self.assistant_header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.im_end_id = tok.convert_tokens_to_ids("<|im_end|>")

    def _process(self, text: str, image_paths: list[str], videos: list,
                 budget: VisionBudget | None = None) -> dict:
        budget = budget or self.budget
        # Qwen3-VL's own processor replaces the template's whole "<|vision_start|><|video_pad|>
        # <|vision_end|>" by per-frame "<t seconds><|vision_start|>...<|vision_end|>" groups;
        # transformers 5.23 replaces only the pad and leaves a stray outer start/end pair, a
        # layout the released models never saw. Hand it the bare pad to get the official one.
        text = text.replace(VIDEO_SLOT, VIDEO_PAD)
        images = [load_image(p, self._fitted_size(p, budget)) for p in image_paths] or None
        video_inputs, repairs = {}, []
        if videos:
            vp = self.processor.video_processor
            loaded = [video_lib.load(v, budget, vp.patch_size, vp.merge_size,
                                     vp.temporal_patch_size) for v in videos]
            video_inputs = {"videos": [v.frames for v in loaded],
                            "videos_kwargs": {**video_lib.processor_kwargs(),
                                              "video_metadata": [v.metadata for v in loaded]}}
            repairs = [f"video {k + 1} ({ref}): {v.filled} of {len(v.frames)} sampled frames "
                       f"could not be decoded and repeat the frame before them"
                       for k, (ref, v) in enumerate(zip(videos, loaded)) if v.filled]
        out = self.processor(text=[text], images=images, return_tensors="pt",
                             images_kwargs=budget.images_kwargs(), **video_inputs)
        return out, repairs

    def _fitted_size(self, ref, budget: VisionBudget) -> tuple[int, int] | None:
        """The (height, width) the processor resizes this image to: the planner's size. None
        for an image already decoded (lmms-eval tasks hand over PIL images)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        if not isinstance(ref, str):
            return None

        ip = self.processor.image_processor
        return smart_resize(*image_size(ref), factor=ip.patch_size * ip.merge_size,
                            min_pixels=budget.min_pixels, max_pixels=budget.max_pixels)

    def encode(self, sample) -> dict:
        """Training example: full conversation, labels on assistant replies only."""
        text = self.processor.apply_chat_template(sample.messages, tokenize=False)
        out, repairs = self._process(text, sample.images, sample.videos, sample.vision_budget)
        ids = out["input_ids"][0]
        if len(ids) > self.max_seq_len:
            # Never truncate: a cut through visual tokens breaks the image/feature match.
            raise SampleTooLong(f"{len(ids)} tokens > max_seq_len {self.max_seq_len}")
        labels = self.assistant_labels(ids.tolist())
        if all(label == IGNORE_INDEX for label in labels):
            raise ValueError("no assistant tokens to learn from")
        example = _example(out, torch.tensor(labels))
        if repairs:  # the sample is used; its consumer reports what was repaired (stage "repaired")
            example[REPAIRS] = repairs
        return example

    def encode_prompt(self, sample) -> dict:
        """Generation input: everything before the last assistant turn plus the assistant header.
        Repairs (filled video frames) are returned under ``REPAIRS`` as for ``encode``."""
        text = prompt_text(self.processor, sample)
        out, repairs = self._process(text, sample.images, sample.videos, sample.vision_budget)
        example = _example(out, None)
        if repairs:
            example[REPAIRS] = repairs
        return example

    def assistant_labels(self, ids: list[int]) -> list[int]:
        labels = [IGNORE_INDEX] * len(ids)
        header, n = self.assistant_header, len(self.assistant_header)
        i = 0
        while i < len(ids):
            if ids[i:i + n] == header:
                start = end = i + n
                while end < len(ids) and ids[end] != self.im_end_id:
                    end += 1
                labels[start:end + 1] = ids[start:end + 1]  # reply + <|im_end|>
                i = end + 1
            else:
                i += 1
        return labels


def prompt_text(processor, sample) -> str:
    """The generation prompt as text: every turn before the last assistant one, templated by the
    checkpoint's own chat template, ending with the assistant header (every eval backend)."""
    return processor.apply_chat_template(sample.prompt_messages(), tokenize=False,
                                         add_generation_prompt=True)


def _example(out, labels) -> dict:
    example = {"input_ids": out["input_ids"][0], "attention_mask": out["attention_mask"][0],
               "mm_token_type_ids": out["mm_token_type_ids"][0]}
    if labels is not None:
        example["labels"] = labels
    for pixels, grid in VISUAL_KEYS:
        if pixels in out:
            example[pixels], example[grid] = out[pixels], out[grid]
    return example


def collate(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad a list of encoded examples into one batch (right padding for training,
    left padding for generation); visual tensors are concatenated in sample order."""
    longest = max(len(e["input_ids"]) for e in examples)
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0,
                  "labels": IGNORE_INDEX}
    batch = {}
    for key, pad in pad_values.items():
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            fill = torch.full((longest - len(e[key]),), pad, dtype=e[key].dtype)
            rows.append(torch.cat([fill, e[key]] if padding_side == "left" else [e[key], fill]))
        batch[key] = torch.stack(rows)
    batch.update(concat_visuals(examples))
    return batch


def concat_visuals(examples: list[dict]) -> dict:
    """Image and video tensors of several examples, concatenated in example order (the order
    their placeholder tokens appear in a padded batch or a packed row)."""
    batch = {}
    for pixels, grid in VISUAL_KEYS:
        with_pixels = [e for e in examples if pixels in e]
        if with_pixels:
            batch[pixels] = torch.cat([e[pixels] for e in with_pixels])
            batch[grid] = torch.cat([e[grid] for e in with_pixels])
    return batch
