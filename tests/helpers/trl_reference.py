"""TRL's own loss arithmetic as a reference for ours (tests/test_dpo.py, scripts/bench_rl.py):
its trainers' ``_compute_loss`` run on stubs that hand it the numbers we computed, so nothing of
ours enters the reference. Needs ``trl`` (installed by ``make setup`` without its pins)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch

from train.objectives.dpo import split_pairs


def trl_dpo_loss(per_token: torch.Tensor, completion: torch.Tensor, ref: torch.Tensor,
                 beta: float, loss_types: list[str], weights: list[float]):
    """TRL 1.16's DPOTrainer._compute_loss on given per-token policy log-probs (a model stub
    returns them), with precomputed reference log-probs: its own arithmetic, none of ours."""
    from trl.trainer.dpo_trainer import DPOTrainer

    rows, length = completion.shape
    out = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(rows, length - 1),
                          mean_logits=torch.zeros(rows, length - 1),
                          is_top1=torch.zeros(rows, length - 1, dtype=torch.bool))
    ident = lambda x: x
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), aux_loss_enabled=False, ld_alpha=None,
        accelerator=SimpleNamespace(device="cpu", gather=ident, gather_for_metrics=ident),
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
        loss_weights=weights, beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    ref_chosen, ref_rejected = split_pairs(ref)
    inputs = {"input_ids": torch.ones(rows, length, dtype=torch.long),
              "attention_mask": torch.ones(rows, length, dtype=torch.long),
              "completion_mask": completion, "ref_chosen_logps": ref_chosen,
              "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, lambda **kw: out, inputs, False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}
