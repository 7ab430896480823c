"""The optimizer groups of ``train.params`` as DeepSpeed's ``model_parameters``: a 2-process
ZeRO-3 run of the tiny MoE with expert LoRA, for tests/test_lora.py.

Run with ``torchrun --nproc_per_node 2 -m tests.helpers.zero3_param_groups MOE_DIR OUT_DIR``
(from the repository root). Each rank takes ``ZERO3_STEPS`` steps on its own sequence
(``rank_ids``) and writes ``OUT_DIR/rank<R>.json``: its losses and the optimizer's groups (name,
lr, weight decay). The test rebuilds the same model with ``zero3_model`` and checks the losses
against plain AdamW in one process, and the weights each rank would send a vLLM engine
(``OUT_DIR/rank<R>_weights.safetensors``) against the reference's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.config import LoraConfig, TrainConfig  # noqa: E402
from train.lora import apply_lora  # noqa: E402
from train.modeling import load_model  # noqa: E402
from train.params import param_groups  # noqa: E402

ZERO3_STEPS = 3
ZERO3_LORA = dict(r=4, alpha=8, targets=["llm_attn", "experts"], modules_to_save=["language_model.norm"])
ZERO3_TRAIN = dict(lr=2e-2, weight_decay=0.1)


def zero3_model(moe_path: str):
    """The LoRA-wrapped tiny MoE and its train config, initialised the same in every process."""
    model = load_model(moe_path)
    torch.manual_seed(0)  # the same adapter initialisation in the workers and the reference
    cfg = TrainConfig(**ZERO3_TRAIN)
    return apply_lora(model, LoraConfig(**ZERO3_LORA), cfg), cfg


def rank_ids(rank: int) -> torch.Tensor:
    """Rank ``rank``'s sequence (its input ids and labels)."""
    return torch.randint(0, 250, (1, 16), generator=torch.Generator().manual_seed(rank))


def main(moe_path: str, out: str) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    model, cfg = zero3_model(moe_path)
    # The config's lr differs from every group's: the groups' own lr must win.
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
          "gradient_clipping": 1.0,  # DeepSpeed's default too; the reference clips the same way
          "optimizer": {"type": "AdamW", "params": {"lr": 0.5, "torch_adam": True}}}
    engine, opt, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, cfg),
                                             config=ds)
    losses = []
    for _ in range(ZERO3_STEPS):
        loss = engine(input_ids=rank_ids(rank), labels=rank_ids(rank)).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    groups = [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
    Path(out, f"rank{rank}.json").write_text(json.dumps({"losses": losses, "groups": groups}))
    # What a vLLM rollout engine would be sent (train/objectives/rollout_vllm.py): the
    # partitioned parameters gathered, adapters merged, every rank the whole model.
    from safetensors.torch import save_file

    from train.objectives.rollout_vllm import inference_weights

    with inference_weights(engine.module) as weights:
        save_file({k: v.detach().clone().contiguous() for k, v in weights.items()},
                  str(Path(out, f"rank{rank}_weights.safetensors")))


if __name__ == "__main__":
    main(*sys.argv[1:3])
