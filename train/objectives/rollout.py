"""Rollouts for GRPO: ``G`` completions of each prompt sampled from the current policy, and the
padded training rows they make.

Generation is HF ``generate`` on the policy the loop trains (a peft model with LoRA, or the
model itself), in eval mode (dropout off; each module's train/eval flag restored after), under
``torch.no_grad``, with ``do_sample`` and the config's temperature / top_p / top_k. Prompts are
left-padded (``data.encode.collate``, as the eval harness's HF backend does) after repeating
each ``G`` times (rows ``k*G .. k*G+G-1`` answer prompt ``k``, the layout ``grpo.py`` expects);
their pixels are repeated with them. Sampling draws from torch's global RNG (CPU, or the CUDA
generator of the policy's device), which the loop's checkpoints save and restore, so a resumed
run samples the same completions.

A completion stops at its first ``<|im_end|>`` or eos token, which is kept (it is an action the
policy took; SFT labels the closing ``<|im_end|>`` too); one that reaches ``max_new_tokens``
without stopping is ``truncated``. Its text is decoded without special tokens (as eval does).

Training rows: prompt ids + completion ids, labels on the completion tokens only, the prompt's
``mm_token_type_ids`` (0 for the completion), pixels and grids; right-padded into one batch of
``B*G`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data.encode import IGNORE_INDEX, collate


@dataclass
class Rollouts:
    """``B*G`` completions in group order, and their training rows (``rows``: a right-padded
    batch with ``labels`` on completion tokens only)."""

    completion_ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    rows: dict
    group_size: int
    logprobs: list[list[float]] | None = None  # the sampler's log-prob of each token, if asked


    def __len__(self) -> int:
        return len(self.texts)


def stop_token_ids(tokenizer) -> list[int]:
    """``<|im_end|>`` and the tokenizer's eos (once each)."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class eval_mode:
    """Puts every module of ``model`` in eval mode and restores each one's own flag after (a
    plain ``train()`` would also wake modules the loop keeps in eval, e.g. a frozen tower)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for module, training in self.modes:
            module.training = training
        return False


# Tokens a completion may not contain: a generated <|image_pad|> would make the training row
# ask the model for one more image's features than its pixels give (and vision start / end would
# open a visual span). Suppressed in sampling, and given no probability in the loss either.
VISUAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def suppressed_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISUAL_TOKENS]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def generate_kwargs(cfg, tokenizer) -> dict:
    """``generate`` arguments of a rollout config (``max_new_tokens``, ``temperature``,
    ``top_p``, optional ``top_k``; ``repetition_penalty`` pinned to 1 so a checkpoint's
    generation_config cannot change the sampling distribution behind the config's back; the
    visual placeholder tokens suppressed)."""
    return {"do_sample": True, "temperature": float(cfg.temperature), "top_p": float(cfg.top_p),
            "top_k": int(getattr(cfg, "top_k", 0) or 0), "repetition_penalty": 1.0,
            "max_new_tokens": int(cfg.max_new_tokens), "eos_token_id": stop_token_ids(tokenizer),
            "pad_token_id": tokenizer.pad_token_id, "use_cache": True,
            "suppress_tokens": suppressed_token_ids(tokenizer)}


def completions_of(new_tokens: torch.Tensor, stops: list[int]) -> tuple[list[list[int]], list[bool]]:
    """(each row's completion up to and including its first stop token, whether it never
    stopped) from ``generate``'s new tokens ``(rows, T)``."""
    ids, truncated = [], []
    for row in new_tokens.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), None)
        ids.append(row if end is None else row[:end + 1])
        truncated.append(end is None)
    return ids, truncated


def training_rows(prompts: list[dict], completion_ids: list[list[int]], group_size: int,
                  pad_token_id: int) -> dict:
    """The right-padded batch of prompt + completion rows (labels on the completion only), row
    ``i`` made of prompt ``i // group_size``; visual tensors of each row's prompt, in row order."""
    examples = []
    for i, completion in enumerate(completion_ids):
        prompt = prompts[i // group_size]
        ids = prompt["input_ids"].cpu()
        new = torch.tensor(completion, dtype=ids.dtype)
        row = {"input_ids": torch.cat([ids, new]),
               "attention_mask": torch.ones(len(ids) + len(new), dtype=prompt["attention_mask"].dtype),
               "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"].cpu(),
                                               torch.zeros(len(new), dtype=prompt["mm_token_type_ids"].dtype)]),
               "labels": torch.cat([torch.full((len(ids),), IGNORE_INDEX, dtype=torch.long),
                                    new.long()])}
        for key, value in prompt.items():
            if key not in row:
                row[key] = value.cpu()
        examples.append(row)
    return collate(examples, pad_token_id, padding_side="right")


def generate_rollouts(policy: torch.nn.Module, prompts: list[dict], cfg, tokenizer,
                      synced_gpus: bool = False) -> Rollouts:
    """``cfg.group_size`` completions of each of ``prompts`` (``encode_prompt`` outputs) sampled
    from ``policy`` (see the module doc). ``synced_gpus``: keep every rank generating until all
    are done (ZeRO-3 gathers parameters collectively in each forward)."""
    group = int(cfg.group_size)
    repeated = [p for p in prompts for _ in range(group)]
    batch = collate(repeated, tokenizer.pad_token_id, padding_side="left")
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    kwargs = generate_kwargs(cfg, tokenizer)
    if synced_gpus:
        kwargs["synced_gpus"] = True
    with eval_mode(policy), torch.no_grad():
        out = policy.generate(**batch, **kwargs)
    new_tokens = out[:, batch["input_ids"].shape[1]:].cpu()
    ids, truncated = completions_of(new_tokens, kwargs["eos_token_id"])
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    rows = training_rows(prompts, ids, group, tokenizer.pad_token_id)
    return Rollouts(ids, texts, truncated, rows, group)
