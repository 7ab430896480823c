"""From samples to the micro-batches one process trains on.

``BatchPlan`` lists the micro-batches of every epoch as a pure function of (seed, epoch): the
mixture's order, cut into fixed-size batches (optionally grouped by length) or packed into rows
of ``pack_tokens`` tokens. ``StepBatchSampler`` hands each data-parallel rank its share of each
step, so a run resumed at step ``s`` sees exactly the samples an uninterrupted run would have
seen. Under sequence parallelism the trainer passes the data-parallel degree and rank
(``DistInfo.dp_size`` / ``dp_rank``), so the N ranks of a group read the same micro-batches.
"""

from __future__ import annotations


import torch

from data.encode import REPAIRS, collate
from data.mixture import Mixture
from data.packing import collate_packed, pack_rows
from data.samples import DataError, reason_of

MAX_SUBSTITUTIONS = 16
LENGTH_GROUP_BATCHES = 64  # group_by_length sorts windows of this many batches


class EncodedDataset(torch.utils.data.Dataset):
    """Encodes a sample on access (``corpus.encode``: each source has its own budget; a prepared
    corpus reads the encoded sample back).

    Under ``skip``, a sample that fails to encode (unreadable image, too long, ...) is replaced
    by the next one - for packed rows, by the next one no longer than the planned length, so
    the row still fits - and reported with the batch."""

    def __init__(self, corpus, on_bad_sample: str = "error", lengths: list[int] | None = None):
        self.corpus, self.policy, self.lengths = corpus, on_bad_sample, lengths

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, index: int) -> dict:
        skipped = []
        for attempt in range(MAX_SUBSTITUTIONS * 8):
            candidate = (index + attempt) % len(self.corpus)
            if attempt and self.lengths is not None and self.lengths[candidate] > self.lengths[index]:
                continue
            try:
                example = self.corpus.encode(candidate)
            except (OSError, ValueError) as e:
                record = self.corpus.bad_record(candidate, reason_of(e))
                if self.policy == "error":
                    raise DataError(f"{record}. Fix the sample, or set data.on_bad_sample=skip.") from e
                skipped.append(record)
                if len(skipped) >= MAX_SUBSTITUTIONS:
                    break
                continue
            example["skipped"] = skipped
            example["repaired"] = [self.corpus.bad_record(candidate, reason)
                                   for reason in example.pop(REPAIRS, [])]
            example["sample_id"] = self.corpus.sample_id(candidate)
            example["sample_index"] = candidate  # the corpus index actually encoded
            return example
        raise DataError(f"{len(skipped)} samples failed to encode in a row from index {index}: "
                        f"{skipped[-1] if skipped else 'no replacement fits the packed row'}")


class BatchPlan:
    """The global list of micro-batches (lists of sample indices) of each epoch."""

    def __init__(self, mixture: Mixture, batch_size: int, seed: int, lengths: list[int] | None = None,
                 pack_tokens: int | None = None, group_by_length: bool = False):
        if (pack_tokens or group_by_length) and lengths is None:
            raise ValueError("packing and group_by_length need the planned sample lengths")
        self.mixture, self.batch_size, self.seed = mixture, batch_size, seed
        self.lengths, self.pack_tokens, self.group_by_length = lengths, pack_tokens, group_by_length
        self._cached: tuple[int, list[list[int]]] | None = None

    def epoch(self, e: int) -> list[list[int]]:
        if self._cached is None or self._cached[0] != e:
            self._cached = (e, self._build(e))
        return self._cached[1]

    def _build(self, e: int) -> list[list[int]]:
        order = self.mixture.epoch_order(e)
        if self.pack_tokens:
            batches = pack_rows(order, self.lengths, self.pack_tokens)
        else:
            if self.group_by_length:
                window = self.batch_size * LENGTH_GROUP_BATCHES
                order = [i for w in range(0, len(order), window)
                         for i in sorted(order[w:w + window], key=lambda i: -self.lengths[i])]
            b = self.batch_size
            batches = [order[k:k + b] for k in range(0, len(order) - b + 1, b)]
            if not self.group_by_length:
                return batches
        # Rows/groups come out ordered by size; shuffle them so steps mix long and short.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + e + 1)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches for steps [start_step, max_steps): step ``s`` takes the
    next ``grad_accum x world_size`` micro-batches of the plan; rank ``r`` gets every
    ``world_size``-th of them."""

    def __init__(self, plan: BatchPlan, grad_accum: int, world_size: int, rank: int,
                 max_steps: int, start_step: int = 0):
        self.plan, self.grad_accum, self.world_size, self.rank = plan, grad_accum, world_size, rank
        self.max_steps, self.start_step = max_steps, start_step
        self.per_step = grad_accum * world_size
        if len(plan.epoch(0)) < self.per_step:
            unit = "packed rows" if plan.pack_tokens else f"batches of {plan.batch_size}"
            raise DataError(f"the data makes {len(plan.epoch(0))} {unit} per epoch, fewer than one "
                            f"step needs (grad_accum x processes = {self.per_step})")

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.grad_accum

    def _steps_in(self, epoch: int) -> int:
        return len(self.plan.epoch(epoch)) // self.per_step

    def __iter__(self):
        epoch, first_step = 0, 0  # first global step of ``epoch``
        while first_step + self._steps_in(epoch) <= self.start_step:
            first_step += self._steps_in(epoch)
            epoch += 1
        step = self.start_step
        while step < self.max_steps:
            batches = self.plan.epoch(epoch)
            k = step - first_step
            if k >= len(batches) // self.per_step:
                first_step, epoch = step, epoch + 1
                continue
            chunk = batches[k * self.per_step:(k + 1) * self.per_step]
            for micro in range(self.grad_accum):
                yield chunk[micro * self.world_size + self.rank]
            step += 1


class TrainCollator:
    """Pads (or packs) a micro-batch and gathers the bad-sample reports of its examples: the
    samples skipped in its making, and those used after a repair."""

    def __init__(self, pad_token_id: int, packing: bool = False, merge_size: int = 2):
        self.pad_token_id, self.packing, self.merge_size = pad_token_id, packing, merge_size

    def __call__(self, examples: list[dict]) -> dict:
        skipped = [s for e in examples for s in e.pop("skipped", [])]
        repaired = [s for e in examples for s in e.pop("repaired", [])]
        described = [describe_example(e, self.merge_size) for e in examples]
        if self.packing:
            batch = collate_packed(examples, self.merge_size)
        else:
            batch = collate(examples, self.pad_token_id, padding_side="right")
        batch["skipped"] = skipped
        batch["repaired"] = repaired
        batch["samples"] = described
        return batch


def describe_example(example: dict, merge_size: int) -> dict:
    """Id and size of one example, for messages about the batch it lands in (e.g. out of memory)."""
    visual = sum(int(example[grid].prod(-1).sum()) // merge_size ** 2
                 for grid in ("image_grid_thw", "video_grid_thw") if grid in example)
    return {"id": example.pop("sample_id", "?"), "index": example.pop("sample_index", None),
            "tokens": len(example["input_ids"]), "visual_tokens": visual}


def make_loader(dataset, sampler: StepBatchSampler, collator: TrainCollator, num_workers: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collator, persistent_workers=False)
