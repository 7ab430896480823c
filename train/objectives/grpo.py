"""GRPO and its variants: group advantages and the clipped policy-gradient loss.

A batch holds ``G`` completions of each prompt, contiguous (rows ``k*G .. k*G+G-1`` answer prompt
``k``). Advantages are the rewards centred on their group's mean, optionally divided by the
group's (unbiased) standard deviation; a group whose rewards are all equal carries no signal and
gets advantages of exactly 0 (never NaN).

The loss, per completion token ``t`` of completion ``i`` with ratio ``r = pi / pi_old``:
``l = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + kl_coef * KL``, where KL is the k3
estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` (Schulman's approximation,
unbiased and >= 0). Styles differ in how token losses are averaged and in their defaults
(``STYLES``):

- ``grpo`` (DeepSeekMath): mean over each completion's tokens, then mean over completions;
- ``dr_grpo`` (Dr. GRPO, Liu et al. 2025): sum over tokens / (completions x a constant
  ``max_tokens``), advantages not divided by the std: no length or difficulty bias;
- ``dapo`` (DAPO, Yu et al. 2025): sum over all tokens of the batch / their count (token-level),
  asymmetric clip ``eps_high`` > ``eps_low`` (clip-higher);
- ``gspo`` (GSPO, Zheng et al. 2025): one importance ratio per completion,
  ``s = exp(mean_t(logp - logp_old))``, clipped per sequence (tiny eps), mean over completions.
"""

from __future__ import annotations

import torch

# Per style: how advantages are scaled and the clip range its paper uses.
STYLES = {
    "grpo": {"scale": "std", "eps_low": 0.2, "eps_high": 0.2},
    "dr_grpo": {"scale": "none", "eps_low": 0.2, "eps_high": 0.2},
    "dapo": {"scale": "std", "eps_low": 0.2, "eps_high": 0.28},
    "gspo": {"scale": "std", "eps_low": 3e-4, "eps_high": 4e-4},
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std",
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages ``(N,)`` of rewards ``(N,)`` in contiguous groups of ``group_size``:
    ``r - mean(group)``, with ``scale="std"`` divided by ``std(group) + eps``; ``"none"``: not
    divided (Dr. GRPO). Equal rewards in a group give zeros."""
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (advantages compare completions of one "
                         f"prompt), got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (N,) with N a multiple of group_size {group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def group_stats(rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """Progress figures of a batch's rewards: ``reward`` (mean), ``reward_std`` (mean over groups
    of the within-group std: 0 means no group carries a learning signal) and
    ``zero_std_fraction`` (groups whose completions all scored the same)."""
    groups = rewards.float().view(-1, group_size)
    std = groups.std(dim=1)
    return {"reward": groups.mean().item(), "reward_std": std.mean().item(),
            "zero_std_fraction": (std == 0).float().mean().item()}


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from sampled tokens' log-probs."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def _clipped(ratio, advantages, eps_low, eps_high):
    """(per-element loss, clipped-low mask, clipped-high mask): where the clip is what binds."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    low = (ratio < 1 - eps_low) & (advantages < 0)
    high = (ratio > 1 + eps_high) & (advantages > 0)
    return -torch.minimum(unclipped, clipped), low, high


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, *, style: str = "grpo", eps_low: float | None = None,
                eps_high: float | None = None, kl_coef: float = 0.0,
                ref_logps: torch.Tensor | None = None, max_tokens: int | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, logged stats). ``logps`` / ``old_logps`` / ``ref_logps``: per-token log-probs of
    the completions ``(N, T)`` under the policy (with grad), the policy that sampled them and the
    reference; ``mask`` ``(N, T)``: completion tokens; ``advantages`` ``(N,)``. ``eps_low`` /
    ``eps_high`` default to the style's (``STYLES``); ``max_tokens`` (dr_grpo's constant
    normaliser) defaults to ``T``."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}, got {style!r}")
    if kl_coef and ref_logps is None:
        raise ValueError("kl_coef > 0 needs ref_logps")
    eps_low = STYLES[style]["eps_low"] if eps_low is None else eps_low
    eps_high = STYLES[style]["eps_high"] if eps_high is None else eps_high
    mask = mask.to(logps.dtype)
    lengths = mask.sum(-1).clamp(min=1)
    log_ratio = (logps - old_logps) * mask
    kl = k3_kl(logps, ref_logps) * mask if ref_logps is not None else torch.zeros_like(logps)
    if style == "gspo":
        ratio = torch.exp(log_ratio.sum(-1) / lengths)
        per_seq, low, high = _clipped(ratio, advantages, eps_low, eps_high)
        loss = (per_seq + kl_coef * kl.sum(-1) / lengths).mean()
        clip_den, mean_ratio = float(ratio.numel()), ratio.detach().mean()
    else:
        ratio = torch.exp(log_ratio)
        per_token, low, high = _clipped(ratio, advantages.unsqueeze(-1), eps_low, eps_high)
        per_token = (per_token + kl_coef * kl) * mask
        low, high = low & mask.bool(), high & mask.bool()
        if style == "grpo":
            loss = (per_token.sum(-1) / lengths).mean()
        elif style == "dr_grpo":
            loss = per_token.sum() / (logps.shape[0] * (max_tokens or logps.shape[1]))
        else:  # dapo
            loss = per_token.sum() / mask.sum().clamp(min=1)
        clip_den = mask.sum().clamp(min=1).item()
        mean_ratio = (ratio.detach() * mask).sum() / mask.sum().clamp(min=1)
    tokens = mask.sum().clamp(min=1)
    stats = {"clip_ratio/low": low.sum().item() / clip_den,
             "clip_ratio/high": high.sum().item() / clip_den,
             "clip_ratio": (low | high).sum().item() / clip_den,
             "ratio": mean_ratio.item(),
             "kl": (kl.detach().sum() / tokens).item(),
             "completion_length": mask.sum(-1).mean().item()}
    return loss, stats
