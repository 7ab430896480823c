"""Log-probabilities of the labelled tokens, the quantity DPO and GRPO are built on.

Shifted by one as transformers' causal-LM loss is (the logits at position t score the label at
t + 1); labels of -100 (prompt, padding, the model's own visual tokens) count nothing.

``token_logps`` takes full logits. ``token_logps_chunked`` takes the last hidden states and the
lm_head weight and computes the labelled positions' logits a chunk of rows at a time, each chunk
recomputed in the backward pass (activation checkpointing): peak memory is one chunk's
``chunk x vocab`` logits instead of the whole ``batch x length x vocab`` tensor (Qwen3-VL's
vocabulary is 151k: 8k tokens of float32 logits are ~5 GB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def shifted(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask) aligned with positions 0..L-2: the label each position predicts (0 where
    ignored, so it can index) and whether it counts."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return targets.masked_fill(~mask, 0), mask


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each next labelled token, mask), both ``(B, L-1)``; 0 where the mask is off.
    Computed in float32 whatever the logits' dtype."""
    targets, mask = shifted(labels)
    logits = logits[:, :-1].float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps.masked_fill(~mask, 0.0), mask


def _chunk_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def token_logps_chunked(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        chunk_tokens: int = 4096, bias: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logps`` from the last hidden states ``(B, L, H)`` and the lm_head ``weight``
    ``(V, H)``: only labelled positions get logits, ``chunk_tokens`` rows at a time, each chunk
    recomputed in backward rather than stored. Same values as ``token_logps(hidden @ W.T)``."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    targets, mask = shifted(labels)
    rows = hidden[:, :-1][mask]  # (N, H): the positions that predict a labelled token
    wanted = targets[mask]
    pieces = []
    for start in range(0, rows.shape[0], chunk_tokens):
        args = (rows[start:start + chunk_tokens], weight, wanted[start:start + chunk_tokens], bias)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk_logps, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(*args))
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(mask, flat), mask


def sequence_logps(token_values: torch.Tensor, mask: torch.Tensor,
                   sequence_ids: torch.Tensor | None = None, n: int | None = None) -> torch.Tensor:
    """Per-sequence sum over the labelled tokens: one per row ``(B,)``, or, for packed rows,
    one per sequence ``(n,)`` with ``sequence_ids`` ``(B, L)`` naming each token's sequence
    (values at position t score token t + 1, so they go to token t + 1's sequence)."""
    if sequence_ids is None:
        return (token_values * mask).sum(-1)
    targets = sequence_ids[:, 1:]
    n = int(sequence_ids.max()) + 1 if n is None else n
    out = torch.zeros(n, dtype=token_values.dtype, device=token_values.device)
    return out.index_add(0, targets[mask], token_values[mask])


def sequence_counts(mask: torch.Tensor, sequence_ids: torch.Tensor | None = None,
                    n: int | None = None) -> torch.Tensor:
    """Labelled tokens per row (or, packed, per sequence), like ``sequence_logps``."""
    return sequence_logps(mask.long(), mask, sequence_ids, n)


def sharded_sequence_logps(logits: torch.Tensor, labels: torch.Tensor, shard,
                           sequence_ids: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logps`` and ``sequence_counts`` under sequence parallelism
    (train/sequence_parallel.py): ``logits`` are this rank's slice of the sequence, ``labels``
    (and ``sequence_ids``) the whole rows. Each rank sums its slice's labelled tokens; the sums
    are added over the SP group, so every rank holds the whole rows' values. The log-prob sum
    is added by a differentiable all-reduce: its backward adds the group's gradients, so a loss
    that every rank computes from the whole sums, divided by the group size, gives each slice
    exactly its share of the unsplit gradient."""
    from torch.distributed.nn.functional import all_reduce

    from train.loss import shift_labels

    targets = shard.labels(shift_labels(labels))  # position t scores token t + 1
    mask = targets != IGNORE_INDEX
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    values = (picked - torch.logsumexp(logits, dim=-1)).masked_fill(~mask, 0.0)
    if sequence_ids is None:
        sums, counts = values.sum(-1), mask.sum(-1)
    else:
        owners = shard.labels(shift_labels(sequence_ids))[mask]  # token t + 1's sequence
        n = int(sequence_ids.max()) + 1
        sums = values.new_zeros(n).index_add(0, owners, values[mask])
        counts = torch.zeros(n, dtype=torch.long, device=values.device).index_add(
            0, owners, torch.ones_like(owners))
    return all_reduce(sums, group=shard.sp.group), shard.all_reduce(counts)
