"""Router-loss capture (``train.moe.RouterLosses``) after DeepSpeed AutoEP under ZeRO-3, for
tests/test_moe.py.

Run with ``torchrun --nproc_per_node 2 -m tests.helpers.zero3_autoep_router MOE_DIR TRAIN_JSON
OUT_DIR`` (from the repository root). Each rank computes, on its own two samples, the router
losses and expert load of the plain model (the reference) and of the AutoEP engine (4 of 8
experts per rank), takes one backward step, and writes ``OUT_DIR/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data.encode import SampleEncoder, VisionBudget, collate  # noqa: E402
from data.sources import load_llava_json  # noqa: E402
from train.config import MoeConfig  # noqa: E402
from train.modeling import load_model  # noqa: E402
from train.moe import RouterLosses  # noqa: E402


def main(ckpt: str, train_json: str, out_dir: str) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad
    from transformers import AutoProcessor

    deepspeed.init_distributed("gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    processor = AutoProcessor.from_pretrained(ckpt)
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 128 * 128))
    samples = load_llava_json(train_json)[2 * rank:2 * rank + 2]
    batch = collate([enc.encode(s) for s in samples], processor.tokenizer.pad_token_id)
    cfg = MoeConfig(z_loss_coef=0.01)

    plain = load_model(ckpt).train()
    router = RouterLosses.attach(plain, cfg)
    plain(**batch)
    want, want_load = router.loss(), router.pop_load()

    model = load_model(ckpt)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        "expert_parallel": {
            "enabled": True, "autoep_size": world, "use_grouped_mm": True, "top_k": 2,
            "moe_layer_pattern": r"model\.language_model\.layers\.\d+\.mlp",
            "router_pattern": "gate", "expert_pattern": "experts", "num_experts_attr": "num_experts",
            "expert_w1": "gate_up_proj", "expert_w2": "down_proj", "expert_w3": None,
            "score_func": "softmax", "route_norm": True, "has_shared_experts": False}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=ds_config)
    router = RouterLosses.attach(engine.module, cfg)
    engine.train()
    out = engine(**batch)
    got = router.loss()
    load = router.pop_load()
    engine.backward(out.loss + got.total)
    weight = router.sites[0].logits_module.weight
    result = {
        "sites": [[s.layer, type(s.logits_module).__name__, type(s.choice_module).__name__]
                  for s in router.sites],
        "local_experts": [m.num_local_experts for m in engine.module.modules()
                          if getattr(m, "_is_autoep_layer", False)],
        "aux": got.aux, "z": got.z, "plain_aux": want.aux, "plain_z": want.z,
        "load": load.tolist(), "plain_load": want_load.tolist(),
        "router_weight_numel": weight.numel(),
        "router_grad_norm": safe_get_full_grad(weight).norm().item(),
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))



if __name__ == "__main__":
    main(*sys.argv[1:4])
