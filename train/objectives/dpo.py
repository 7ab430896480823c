"""DPO and its common variants, on per-sequence log-probs of a pair batch (data/preference.py:
rows 0..B-1 chosen, rows B..2B-1 rejected).

With ``d = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))`` (sums over reply tokens):

- ``sigmoid`` (Rafailov et al. 2023, eq. 7): ``-log sigmoid(beta d)``; with ``label_smoothing``
  eps it is cDPO (Mitchell 2023, conservative DPO: the label is wrong with probability eps):
  ``-(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)``;
- ``ipo`` (Azar et al. 2023, eq. 17): ``(d' - 1 / (2 beta))^2`` where ``d'`` uses log-ratios
  averaged per reply token (the length normalisation TRL uses, confirmed there with the IPO
  authors), so it needs each side's token count;
- ``sft_weight`` > 0 adds that times the NLL of the chosen replies (mean over their tokens, as
  TRL's ``sft`` loss), the RPO-style anchor that keeps the chosen likelihood from falling.

Logged stats (TRL's names): ``rewards/chosen`` / ``rewards/rejected`` = beta x the policy /
reference log-ratio, ``rewards/margins`` their difference, ``rewards/accuracies`` the fraction
of pairs with chosen reward > rejected reward; ``logps/chosen`` / ``logps/rejected``.

Reference log-probs: ``reference_logps`` runs a peft model with its adapters disabled (the
frozen base: no second copy of the weights), or precomputed values are passed in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.objectives.logprobs import (
    sequence_counts,
    sequence_logps,
    token_logps,
    token_logps_chunked,
)

# sequence_ids: data.preference.SEQUENCE_IDS; pair_index: dpo_reference.PAIR_INDEX
NOT_MODEL_INPUTS = ("labels", "sequence_ids", "pair_index")

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None,
             sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss averaged over the B pairs, logged stats). Arguments are per-pair sums of reply
    log-probs ``(B,)``; ``chosen_tokens`` / ``rejected_tokens``: reply token counts ``(B,)``,
    needed by ``ipo`` and by ``sft_weight``."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError("label_smoothing (cDPO) applies to the sigmoid loss only")
    needs_counts = loss_type == "ipo" or sft_weight
    if needs_counts and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError("ipo and sft_weight need chosen_tokens and rejected_tokens (reply "
                         "token counts per pair)")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        logits = beta * (chosen_ratio - rejected_ratio)
        losses = (-(1 - label_smoothing) * F.logsigmoid(logits)
                  - label_smoothing * F.logsigmoid(-logits))
    else:
        delta = (chosen_ratio / chosen_tokens.clamp(min=1)
                 - rejected_ratio / rejected_tokens.clamp(min=1))
        losses = (delta - 1 / (2 * beta)) ** 2
    loss = losses.mean()
    stats = {}
    if sft_weight:
        nll = -policy_chosen.sum() / chosen_tokens.sum().clamp(min=1)
        loss = loss + sft_weight * nll
        stats["sft_nll"] = nll.item()
    chosen_rewards = beta * chosen_ratio.detach()
    rejected_rewards = beta * rejected_ratio.detach()
    stats.update({
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(),
        "logps/rejected": policy_rejected.detach().mean().item(),
    })
    return loss, stats


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) halves of a 2B-row pair batch's per-row values."""
    if values.shape[0] % 2:
        raise ValueError(f"a pair batch has an even number of rows, got {values.shape[0]}")
    return values.chunk(2, dim=0)


# --- log-probs from a model ------------------------------------------------------------------

def model_inputs(batch: dict) -> dict:
    """The batch without its labels and packed sequence ids (the model is asked for logits /
    hidden states only), and no KV cache: with one, transformers does not build a packed row's
    block-diagonal mask from its restarted positions."""
    return {**{k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}, "use_cache": False}


def _hf_model(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def batch_token_logps(model, batch: dict, chunk_tokens: int | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(token log-probs, mask) ``(rows, L-1)`` of ``batch["labels"]`` under ``model``.
    ``chunk_tokens``: run the decoder for hidden states and compute logits that many labelled
    rows at a time (``token_logps_chunked``) instead of materialising all logits."""
    labels = batch["labels"]
    if chunk_tokens is None:
        return token_logps(model(**model_inputs(batch)).logits, labels)
    hf = _hf_model(model)
    head = hf.lm_head
    if hasattr(head, "base_layer") or hasattr(head, "modules_to_save"):
        raise ValueError("chunked log-probs read lm_head.weight directly, but lm_head carries "
                         "adapters / a modules_to_save copy; use chunk_tokens=None")
    hidden = hf.model(**model_inputs(batch)).last_hidden_state
    return token_logps_chunked(hidden, head.weight, labels, chunk_tokens, head.bias)


def batch_sequence_logps(model, batch: dict, chunk_tokens: int | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of reply log-probs, reply token count) per row ``(rows,)`` of a padded batch, or per
    sequence of a packed one (``sequence_ids``: in the padded batch's row order)."""
    values, mask = batch_token_logps(model, batch, chunk_tokens)
    ids = batch.get("sequence_ids")
    return sequence_logps(values, mask, ids), sequence_counts(mask, ids)


@torch.no_grad()
def reference_logps(model, batch: dict, chunk_tokens: int | None = None) -> torch.Tensor:
    """Per-row reply log-probs under the frozen base of a peft (LoRA) model: the same model with
    its adapters disabled (``model.disable_adapter()``), so no second copy of the weights is
    held. A model that is not a peft model is refused: pass precomputed reference log-probs or a
    separate frozen reference model's ``batch_sequence_logps`` instead."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError(f"{type(model).__name__} is not a peft model (no disable_adapter()): "
                         f"reference log-probs from disabled adapters need LoRA training; for "
                         f"full fine-tuning use a frozen reference copy or precomputed log-probs")
    with model.disable_adapter():
        return batch_sequence_logps(model, batch, chunk_tokens)[0]
