"""Run under ``torchrun --nproc_per_node N``: one model split over N ranks by Ulysses sequence
parallelism against the same model unsplit, on one batch holding an image and a video.

Every rank builds the same model and batch. The reference (no SP) runs first on every rank;
then the SP model (sharded text model + chunked loss) runs its slice. The SP group's losses
and gradients are summed over ranks (what DDP / ZeRO's reduction gives, up to the world-size
factor the trainer folds into ``num_items_in_batch``) and compared with the reference.
Writes {"loss_ref", "loss_sp", "loss_abs_diff", "grad_max_rel_diff", "grads", ...} to argv[2]
from rank 0.

usage: sp_equivalence.py MODEL_DIR OUT.json [dense|lora] [packed|padded|single] [checkpointing]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import sp_batches
from train.loss import LossHead
from train.sequence_parallel import SequenceShard, new_sp_group


def load(path: str, lora: bool, checkpointing: bool):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32,
                                                       attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        # A non-zero B, so the adapters' gradients are not trivially zero on both sides.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    model.train()
    return model


def step(model, head: LossHead, batch: dict, items: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = head.forward(model, {**{k: v.clone() for k, v in batch.items()}, "num_items_in_batch": items})
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def main() -> None:
    path, out_path = sys.argv[1], Path(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "dense"
    layout = sys.argv[4] if len(sys.argv) > 4 else "packed"
    checkpointing = len(sys.argv) > 5 and sys.argv[5] == "checkpointing"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    lora = mode == "lora"

    ref_model = load(path, lora, checkpointing)
    batch = getattr(sp_batches, f"{layout}_batch")(ref_model.config, seed=3)
    items = torch.tensor(sp_batches.label_count(batch))
    ref_loss, ref_grads = step(ref_model, LossHead(ref_model, "chunked", 16), batch, items)
    del ref_model

    sp_model = load(path, lora, checkpointing)
    group = new_sp_group(world, rank, world)
    shard = SequenceShard.install(sp_model, group)
    sp_loss, sp_grads = step(sp_model, LossHead(sp_model, "chunked", 16, shard=shard), batch, items)
    dist.all_reduce(sp_loss)
    for g in sp_grads.values():
        dist.all_reduce(g)
    if rank == 0:
        assert sp_grads.keys() == ref_grads.keys(), sorted(set(sp_grads) ^ set(ref_grads))
        rel = {n: ((sp_grads[n] - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp(min=1e-12)).item()
               for n in ref_grads}
        absd = {n: (sp_grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads}
        result = {"loss_ref": ref_loss.item(), "loss_sp": sp_loss.item(),
                  "loss_abs_diff": abs(ref_loss.item() - sp_loss.item()),
                  "grad_max_rel_diff": max(rel.values()), "grad_max_abs_diff": max(absd.values()),
                  "grads": sorted(ref_grads), "tokens": int(batch["input_ids"].shape[1]),
                  "pad": shard.pad, "world": world}
        out_path.write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
