"""Generation backends. Each turns samples into reply texts in two steps, so that a sample that
cannot be prepared (an unreadable image) is recorded by the runner without losing its batch:

- ``prepare(sample, budget)``: one sample's model input; raises OSError / ValueError on bad input;
- ``generate(prepared)``: the replies for a list of prepared inputs, in order.

A backend also exposes ``processor``, the checkpoint's own: the runner reads its chat template
(a Thinking template opens ``<think>`` in the prompt, which changes how replies are scored).

``hf`` is batched generation with transformers (left padding, greedy by default; a presence
penalty as vLLM defines it, ``eval.sampling``); ``vllm``
(``eval.vllm_backend``) serves the same prompts through vLLM when it is installed and a GPU
is present.
"""

from __future__ import annotations

import torch

from data.encode import SampleEncoder, collate
from eval.checkpoints import ResolvedCheckpoint, load_checkpoint
from eval.sampling import hf_generate_kwargs


class HFGenerator:
    def __init__(self, resolved: ResolvedCheckpoint, cfg, device: torch.device):
        self.model, self.processor = load_checkpoint(resolved, cfg.dtype, cfg.attn_implementation)
        self.model.to(device).eval()
        self.gen = cfg.generation
        self.encoders: dict = {}

    def prepare(self, sample, budget) -> dict:
        key = repr(budget)
        if key not in self.encoders:
            self.encoders[key] = SampleEncoder(self.processor, budget, max_seq_len=10**9)
        return self.encoders[key].encode_prompt(sample)

    @torch.no_grad()
    def generate(self, prepared: list[dict]) -> list[str]:
        batch = collate(prepared, self.processor.tokenizer.pad_token_id, padding_side="left")
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        if self.gen.do_sample:
            torch.manual_seed(self.gen.seed)  # per batch: the same batch samples the same reply
        out = self.model.generate(**batch, **hf_generate_kwargs(self.gen, batch["input_ids"].shape[1]))
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        return self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def build_generator(resolved: ResolvedCheckpoint, cfg, device: torch.device):
    if cfg.backend == "vllm":
        from eval.vllm_backend import VLLMGenerator

        return VLLMGenerator(resolved, cfg)
    return HFGenerator(resolved, cfg, device)
