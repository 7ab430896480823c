"""Process-group set-up, the one place that knows about launchers.

Works the same under plain ``python``, ``torchrun`` and the ``deepspeed`` launcher (all set
RANK / WORLD_SIZE / LOCAL_RANK; deepspeed also appends ``--local_rank``, which the CLI accepts).
CPU runs use gloo; CUDA runs use nccl.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sequence_parallel: int = 1  # ranks per sequence-parallel group (consecutive ranks)
    sp_group: object = None  # train.sequence_parallel.SPGroup when sequence_parallel > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        """Data-parallel degree: how many different micro-batches a micro-step trains on."""
        return self.world_size // self.sequence_parallel

    @property
    def dp_rank(self) -> int:
        """Which of them this rank holds (every rank of an SP group holds the same one)."""
        return self.rank // self.sequence_parallel

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sequence_parallel


def init_distributed() -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def with_sequence_parallel(info: DistInfo, size: int) -> DistInfo:
    """``info`` with its sequence-parallel group made (collectively, on every rank)."""
    if size == 1:
        return info
    if info.world_size == 1 or not dist.is_initialized():
        raise ValueError(f"distributed.sequence_parallel={size} splits each sample over {size} "
                         f"processes, but this run has one: launch with torchrun --nproc_per_node "
                         f"{size} (or a multiple), or set distributed.sequence_parallel=1")
    from train.sequence_parallel import new_sp_group

    return replace(info, sequence_parallel=size,
                   sp_group=new_sp_group(size, info.rank, info.world_size))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sum each value over all ranks, in one collective."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, is_main: bool):
    """Rank 0's ``obj`` on every rank (picklable; other ranks pass anything)."""
    if not dist.is_initialized():
        return obj
    box = [obj if is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decide_on_main(fn, is_main: bool):
    """``fn()`` run on rank 0 alone, its result given to every rank; an exception it raises is
    raised on every rank too. File decisions (is the folder in use, which checkpoint to resume)
    go through here: ranks reading a shared folder at different moments could decide
    differently, and a rank that fails alone would leave the others waiting in a collective."""
    outcome = None
    if is_main:
        try:
            outcome = (True, fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            outcome = (False, e)
    ok, value = broadcast_object(outcome, is_main)
    if not ok:
        raise value
    return value


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
