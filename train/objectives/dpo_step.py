"""DPO inside the training loop: how a micro-batch of preference pairs becomes a loss.

The loop (train/trainer.py) is the SFT loop; with ``train.objective: dpo`` it reads a
corpus of pairs (``data.pair_corpus``) through the same sampler (resume, mixture, skipping bad pairs
all unchanged), batches with ``PairCollator`` (2B padded rows, or the 2B sequences packed in one
row) and asks ``DpoStep`` for each micro-batch's loss:

- policy log-probs: one forward of the wrapped model (DDP / DeepSpeed see an ordinary forward)
  on the 2B rows, summed per reply;
- reference log-probs: the same model with its LoRA adapters disabled (no second copy), or, for
  full fine-tuning, a frozen copy of the base loaded once (``reference_model``), under no_grad;
  or, with ``dpo.precompute_reference``, looked up in a table computed once before the first
  step (``dpo_reference.py``: no reference forward during training, no copy);
- ``dpo_loss`` over the pairs, scaled so that what reaches ``backward`` is the mean over every
  pair of the global batch however it is split into micro-batches and ranks (the same
  convention as the SFT token mean: DDP / ZeRO average gradients over ranks).
"""

from __future__ import annotations

import contextlib

import torch

from data.encode import REPAIRS  # noqa: F401  (examples carry it; the dataset pops it)
from data.preference import SEQUENCE_IDS, collate_packed_pairs, collate_pairs, split_sides
from train.objectives.dpo import NOT_MODEL_INPUTS, dpo_loss, reference_logps, split_pairs
from train.engine import unwrap
from train.loss import hf_model
from train.objectives.dpo_reference import PAIR_INDEX, ReferenceTable
from train.objectives.logprobs import (sequence_counts, sequence_logps,
                                      sharded_sequence_logps, token_logps)
from train.objectives.shared_vision import SharedVision

# metrics.jsonl keys: the stats dpo_loss returns, averaged over a step's micro-batches
STAT_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected")


class PairCollator:
    """``TrainCollator`` for pairs: pads B pairs to 2B rows (chosen first) or packs their 2B
    sequences into one row, and gathers the examples' bad-sample reports."""

    def __init__(self, pad_token_id: int, packing: bool = False, merge_size: int = 2):
        self.pad_token_id, self.packing, self.merge_size = pad_token_id, packing, merge_size

    def __call__(self, examples: list[dict]) -> dict:
        skipped = [s for e in examples for s in e.pop("skipped", [])]
        repaired = [s for e in examples for s in e.pop("repaired", [])]
        described = [describe_pair(e, self.merge_size) for e in examples]
        batch = (collate_packed_pairs(examples, self.merge_size) if self.packing
                 else collate_pairs(examples, self.pad_token_id))
        batch.update(skipped=skipped, repaired=repaired, samples=described)
        if all(d["index"] is not None for d in described):  # the key of precomputed references
            batch[PAIR_INDEX] = torch.tensor([d["index"] for d in described], dtype=torch.long)
        return batch


def describe_pair(example: dict, merge_size: int) -> dict:
    """Id and size of a pair (both sides), for messages about its batch."""
    chosen, rejected = split_sides(example)
    visual = sum(int(side[grid].prod(-1).sum()) // merge_size ** 2 for side in (chosen, rejected)
                 for grid in ("image_grid_thw", "video_grid_thw") if grid in side)
    return {"id": example.pop("sample_id", "?"), "index": example.pop("sample_index", None),
            "tokens": len(chosen["input_ids"]) + len(rejected["input_ids"]),
            "visual_tokens": visual}


def pairs_in(batch: dict) -> int:
    """Pairs in a collated micro-batch."""
    if SEQUENCE_IDS in batch:
        return (int(batch[SEQUENCE_IDS].max()) + 1) // 2
    return batch["input_ids"].shape[0] // 2


class DpoStep:
    """The DPO loss of one micro-batch. The reference log-probs come from ``table`` when given
    (``dpo.precompute_reference``: looked up by the batch's ``PAIR_INDEX``), else from
    ``reference``, a frozen model for full fine-tuning, else from the policy (a peft model) with
    its adapters disabled. ``policy``: the unwrapped model the loop trains, whose vision tower
    (and the reference's) then encodes each distinct image of a micro-batch once."""

    def __init__(self, dpo_cfg, reference: torch.nn.Module | None = None,
                 table: ReferenceTable | None = None, shard=None,
                 policy: torch.nn.Module | None = None):
        self.cfg, self.reference, self.table = dpo_cfg, reference, table
        # Under sequence parallelism the policy's forward returns this rank's slice of logits.
        self.shard = shard
        # The two sides of a pair share their images: each is encoded once (shared_vision.py);
        # sequence parallelism splits the tower its own way.
        self.shared = [] if shard is not None else [
            SharedVision(hf_model(unwrap(m)).model.visual) for m in (policy, reference)
            if m is not None]

    def vision_shared(self):
        """While on, each distinct image of a forward's batch runs through the tower once."""
        stack = contextlib.ExitStack()
        for shared in self.shared:
            stack.enter_context(shared.on())
        return stack

    def logps_of(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sequence reply log-prob sums, reply token counts) from a forward's logits."""
        ids = batch.get(SEQUENCE_IDS)
        if self.shard is not None:
            return sharded_sequence_logps(logits, batch["labels"], self.shard, ids)
        values, mask = token_logps(logits, batch["labels"])
        return sequence_logps(values, mask, ids), sequence_counts(mask, ids)

    def policy_logps(self, forward, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sequence reply log-prob sums, reply token counts) under the policy, through
        ``forward`` (the engine's: DDP / DeepSpeed see an ordinary forward)."""
        logits = forward({k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}).logits
        return self.logps_of(logits, batch)

    @torch.no_grad()
    def reference_logps(self, policy: torch.nn.Module, batch: dict) -> torch.Tensor:
        if self.table is not None:
            return self.table.logps(batch[PAIR_INDEX])
        if self.reference is None and self.shard is not None:  # the split policy, adapters off
            if not hasattr(policy, "disable_adapter"):
                raise ValueError("DPO's reference needs LoRA (adapters off) or a frozen copy")
            inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
            with policy.disable_adapter():
                return self.logps_of(policy(**inputs, use_cache=False).logits, batch)[0]
        if self.reference is None:
            return reference_logps(policy, batch)
        inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
        values, mask = token_logps(self.reference(**inputs, use_cache=False).logits,
                                   batch["labels"])
        return sequence_logps(values, mask, batch.get(SEQUENCE_IDS))

    def loss(self, forward, policy: torch.nn.Module, batch: dict,
             pairs_per_rank: float) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backward, stats). ``pairs_per_rank``: the global batch's pairs divided by
        the world size, so the micro-batches' losses add up to the global pair mean."""
        with self.vision_shared():
            ref_chosen, ref_rejected = split_pairs(self.reference_logps(policy, batch))
            logps, counts = self.policy_logps(forward, batch)
        chosen, rejected = split_pairs(logps)
        chosen_tokens, rejected_tokens = split_pairs(counts)
        loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=self.cfg.beta,
                               loss_type=self.cfg.loss_type,
                               label_smoothing=self.cfg.label_smoothing,
                               chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
                               sft_weight=self.cfg.sft_weight)
        # Every rank of an SP group holds the whole loss: 1/N each, and the all-reduce's
        # backward adds the group's gradients back up (logprobs.sharded_sequence_logps).
        group = self.shard.sp.size if self.shard is not None else 1
        return loss * (chosen.shape[0] / pairs_per_rank / group), stats


def reference_model(cfg, build_reference) -> torch.nn.Module | None:
    """A frozen copy of the base for full-fine-tuning DPO (``build_reference()`` loads it);
    None with LoRA, whose reference is the policy with its adapters disabled."""
    if cfg.lora.enabled:
        return None
    model = build_reference()
    model.eval()
    model.requires_grad_(False)
    return model
