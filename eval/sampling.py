"""Sampling for the HF backend as vLLM does it, so both backends take the same settings.

vLLM's presence penalty (``vllm/model_executor/layers/utils.py``, ``apply_penalties``, which
follows the OpenAI API definition): ``logits -= presence_penalty * output_mask``, where
``output_mask[t]`` is 1 when token t occurs at least once in the tokens generated so far for
that sequence, the prompt's tokens not counted (they enter the repetition penalty only); a flat
subtraction however often the token occurred, in float32, applied to the raw logits before
temperature, top-k and top-p.

transformers has no presence penalty, and appends a caller's logits processors *after* its own
temperature / top-k / top-p warpers, which would subtract the penalty from already-scaled,
already-cut logits. So with a presence penalty, ``hf_generate_kwargs`` hands transformers one
processor list in vLLM's order (repetition penalty stays transformers' own, first, as in vLLM):
presence penalty, temperature, top-k, top-p; and turns transformers' own warpers off.
"""

from __future__ import annotations

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)


class PresencePenalty(LogitsProcessor):
    """Subtract ``penalty`` once from the logit of every token id that occurs in the sequence's
    generated part (``input_ids[:, prompt_len:]``; prompts are left-padded to one length)."""

    def __init__(self, penalty: float, prompt_len: int):
        self.penalty, self.prompt_len = float(penalty), int(prompt_len)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:]
        if self.penalty == 0 or generated.shape[1] == 0:
            return scores
        seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, generated.to(scores.device), True)
        return (scores.float() - self.penalty * seen.float()).to(scores.dtype)


def presence_penalty_reference(logits: list[list[float]], generated: list[list[int]],
                               penalty: float) -> list[list[float]]:
    """vLLM's formula written out in plain Python, the reference the processor is tested and
    benchmarked against: each logit less ``penalty`` if its token id was generated at least once."""
    return [[value - (penalty if token in set(row_ids) else 0.0) for token, value in enumerate(row)]
            for row, row_ids in zip(logits, generated)]


def hf_generate_kwargs(gen, prompt_len: int) -> dict:
    """transformers ``generate`` arguments for a GenerationConfig (see the module docstring)."""
    kwargs = gen.generate_kwargs()
    if not gen.do_sample or not gen.presence_penalty:
        return kwargs
    processors = [PresencePenalty(gen.presence_penalty, prompt_len)]
    if gen.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(gen.temperature))
    if gen.top_k:
        processors.append(TopKLogitsWarper(gen.top_k))
    if gen.top_p < 1.0:
        processors.append(TopPLogitsWarper(gen.top_p))
    kwargs.update(temperature=1.0, top_k=0, top_p=1.0,
                  logits_processor=LogitsProcessorList(processors))
    return kwargs
