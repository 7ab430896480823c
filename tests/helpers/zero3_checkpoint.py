"""Write a ZeRO-3 full fine-tuning checkpoint the way the trainer lays it out, for export tests.

Run with ``torchrun --nproc_per_node 2 tests/helpers/zero3_checkpoint.py --model DIR --out DIR
[--ep 2]``. It trains a few steps on the export verification sample (so the weights differ from
the base), then writes ``out/config.json`` (the run config), ``out/checkpoint-N/train_config.json``
and ``out/checkpoint-N/deepspeed/`` (``engine.save_checkpoint(..., tag="state")``). Rank 0 also
writes ``out/reference.pt``: logits and greedy tokens of the live, still-sharded model on that
sample, the "training-time model" an export must reproduce. ``--ep 2`` adds DeepSpeed AutoEP
(experts sharded over the two ranks) with the Qwen3-VL-MoE module map from STACK-NOTES.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

AUTOEP_QWEN3_VL_MOE = {
    "moe_layer_pattern": r"model\.language_model\.layers\.\d+\.mlp",
    "router_pattern": "gate", "expert_pattern": "experts", "num_experts_attr": "num_experts",
    "expert_w1": "gate_up_proj", "expert_w2": "down_proj", "score_func": "softmax",
    "route_norm": True,
}


def deepspeed_config(ep: int, top_k: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "torch_adam": True}},
        "steps_per_print": 10**9,
    }
    if ep > 1:
        config["expert_parallel"] = dict(AUTOEP_QWEN3_VL_MOE, enabled=True, autoep_size=ep, top_k=top_k)
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--freeze-vision", action="store_true", help="as train.freeze_vision")
    args = parser.parse_args()

    import deepspeed
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from train.export import sample_outputs, verification_inputs

    deepspeed.init_distributed(dist_backend="gloo")
    rank = int(os.environ["RANK"])
    out = Path(args.out)
    ckpt = out / f"checkpoint-{args.steps}"
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32)
    if args.freeze_vision:
        model.model.visual.requires_grad_(False)
    top_k = getattr(model.config.get_text_config(), "num_experts_per_tok", 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable,
                                      config=deepspeed_config(args.ep, top_k))
    inputs = verification_inputs(processor)
    engine.train()
    for _ in range(args.steps):
        loss = engine(**inputs, labels=inputs["input_ids"]).loss
        engine.backward(loss)
        engine.step()

    run_config = {"model": {"path": str(args.model), "dtype": "float32"},
                  "lora": {"enabled": False},
                  "distributed": {"deepspeed": "zero3", "expert_parallel": args.ep}}
    if rank == 0:
        ckpt.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run_config, indent=2))
        (ckpt / "train_config.json").write_text(json.dumps(run_config, indent=2))
    torch.distributed.barrier()
    engine.save_checkpoint(str(ckpt / "deepspeed"), tag="state")

    engine.eval()
    reference = sample_outputs(engine.module, processor)  # every rank runs it (sharded params)
    if rank == 0:
        torch.save({"logits": reference.logits, "generated": reference.generated},
                   out / "reference.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # explicit gloo teardown (see zero3_reload.py)


if __name__ == "__main__":
    main()
