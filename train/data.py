"""From samples to the micro-batches one process trains on.

The order is a pure function of (seed, step): step ``s`` of epoch ``e`` takes its slice of
``randperm(n, seed + e)``, split across gradient-accumulation micro-steps and ranks. Resuming at
step ``s`` therefore sees exactly the samples an uninterrupted run would have seen.
"""

from __future__ import annotations

import torch

from data.encode import collate
from data.samples import BadSample, DataError

MAX_SUBSTITUTIONS = 16


class EncodedDataset(torch.utils.data.Dataset):
    """Encodes a sample on access. Under ``skip``, a sample that fails to encode (unreadable
    image, too long, ...) is replaced by the next one and reported with the batch."""

    def __init__(self, samples, encoder, on_bad_sample: str = "error"):
        self.samples, self.encoder, self.policy = samples, encoder, on_bad_sample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        skipped = []
        for attempt in range(MAX_SUBSTITUTIONS):
            sample = self.samples[(index + attempt) % len(self.samples)]
            try:
                example = self.encoder.encode(sample)
            except (OSError, ValueError) as e:
                record = BadSample(sample.source, sample.index, sample.id, f"{type(e).__name__}: {e}")
                if self.policy == "error":
                    raise DataError(f"{record}. Fix the sample, or set data.on_bad_sample=skip.") from e
                skipped.append(str(record))
                continue
            example["skipped"] = skipped
            return example
        raise DataError(f"{MAX_SUBSTITUTIONS} consecutive samples failed to encode from index "
                        f"{index}: {skipped[-1]}")


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches (lists of sample indices) for steps [start_step, max_steps)."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, world_size: int, rank: int,
                 seed: int, max_steps: int, start_step: int = 0):
        self.n, self.batch_size, self.grad_accum = n, batch_size, grad_accum
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.max_steps, self.start_step = max_steps, start_step
        self.samples_per_step = batch_size * grad_accum * world_size
        if n < self.samples_per_step:
            raise DataError(f"{n} training samples is fewer than one step needs "
                            f"(batch_size x grad_accum x processes = {self.samples_per_step})")
        self.steps_per_epoch = n // self.samples_per_step

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.grad_accum

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start_step, self.max_steps):
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            chunk = perm[k * self.samples_per_step:(k + 1) * self.samples_per_step]
            for micro in range(self.grad_accum):
                start = (micro * self.world_size + self.rank) * self.batch_size
                yield chunk[start:start + self.batch_size]


class TrainCollator:
    """Right-pads a micro-batch and gathers the bad-sample reports of its examples."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        skipped = [s for e in examples for s in e.pop("skipped", [])]
        batch = collate(examples, self.pad_token_id, padding_side="right")
        batch["skipped"] = skipped
        return batch


def make_loader(dataset, sampler: StepBatchSampler, pad_token_id: int, num_workers: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=TrainCollator(pad_token_id),
                                       persistent_workers=False)
