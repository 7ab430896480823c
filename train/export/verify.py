"""Checking an export: reload it with plain transformers and compare it with the training-time
model on a fixed image + text sample (the largest logit difference, and greedy generation token
for token)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


class ExportMismatch(AssertionError):
    """The reloaded export does not generate what the training-time model generates."""


@dataclass
class SampleOutputs:
    logits: torch.Tensor  # (1, seq, vocab), float32
    generated: list[int]  # greedy continuation token ids


def verification_inputs(processor) -> dict:
    """A fixed, non-square gradient image and a question, as the processor encodes them."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:96]
    image = Image.fromarray(np.stack([x * 2, y * 3, (x + y) % 256], -1).astype(np.uint8))
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


@torch.no_grad()
def sample_outputs(model, processor, max_new_tokens: int = 8) -> SampleOutputs:
    """Logits and greedy tokens of ``model`` on the verification sample (any wrapped model:
    peft, a DeepSpeed engine's module; every rank must call it under ZeRO-3)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in verification_inputs(processor).items()}
    logits = model(**inputs).logits.float().cpu()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    model.train(was_training)
    return SampleOutputs(logits, out[0, inputs["input_ids"].shape[1]:].tolist())


def verify_export(reference, export_dir: str | Path, processor=None) -> float:
    """Reload ``export_dir`` with plain transformers and compare it with ``reference`` (the
    training-time model, or its ``SampleOutputs``). Returns the largest absolute logit
    difference; raises ExportMismatch if greedy generation differs."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = processor or AutoProcessor.from_pretrained(str(export_dir))
    if not isinstance(reference, SampleOutputs):
        reference = sample_outputs(reference, processor)
    exported = AutoModelForImageTextToText.from_pretrained(str(export_dir))
    got = sample_outputs(exported, processor, max_new_tokens=len(reference.generated) or 8)
    diff = (got.logits - reference.logits).abs().max().item()
    if got.generated != reference.generated:
        raise ExportMismatch(f"{export_dir}: greedy generation differs from the training-time "
                             f"model: {got.generated} vs {reference.generated} (max abs logit "
                             f"difference {diff:.3g})")
    return diff
