"""DeepSpeed configs built from the YAML: shipped names, "auto" values, EP preset, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from data.configio import load_config
from train.config import Config
from train.distributed import DistInfo
from train.engine import DEEPSPEED_CONFIGS, deepspeed_config

CPU2 = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))


def cfg(*overrides):
    return load_config(Config, None, ["model.path=x", "data.train=y", *overrides])


def test_shipped_configs_fill_auto_values_from_the_yaml(tiny):
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(tiny["moe"])
    assert sorted(p.stem for p in DEEPSPEED_CONFIGS.glob("*.json")) == ["zero2", "zero3", "zero3_offload"]
    c = cfg("train.batch_size=2", "train.grad_accum=3", "train.max_grad_norm=0.5", "model.dtype=bfloat16",
            "distributed.deepspeed=zero3_offload", "train.lr=2e-5", "train.weight_decay=0.1")
    ds = deepspeed_config(c, CPU2, model_config)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 3, 12)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["optimizer"]["params"]["lr"] == 2e-5 and ds["optimizer"]["params"]["weight_decay"] == 0.1
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "auto" not in json.dumps(ds)
    assert "expert_parallel" not in ds


def test_expert_parallel_section_uses_the_preset_and_the_text_config(tiny):
    from transformers import AutoConfig

    c = cfg("distributed.deepspeed=zero3", "distributed.expert_parallel=2")
    ds = deepspeed_config(c, CPU2, AutoConfig.from_pretrained(tiny["moe"]))
    ep = ds["expert_parallel"]
    assert ep["enabled"] and ep["autoep_size"] == 2 and ep["top_k"] == 2
    assert ep["moe_layer_pattern"].endswith(r"model\.language_model\.layers\.\d+\.mlp")
    with pytest.raises(ValueError, match="dense model"):
        deepspeed_config(c, CPU2, AutoConfig.from_pretrained(tiny["dense"]))


def test_deepspeed_json_disagreeing_with_the_yaml_is_named(tmp_path, tiny):
    from transformers import AutoConfig

    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match=r"mine.json: train_micro_batch_size_per_gpu=8 disagrees"):
        deepspeed_config(cfg(f"distributed.deepspeed={path}"), CPU2, AutoConfig.from_pretrained(tiny["dense"]))
    with pytest.raises(FileNotFoundError, match=r"zero4.*\['zero2', 'zero3', 'zero3_offload'\]"):
        deepspeed_config(cfg("distributed.deepspeed=zero4"), CPU2, AutoConfig.from_pretrained(tiny["dense"]))


def test_schedule_warms_up_then_decays_and_holds_on_a_skipped_step():
    """transformers' schedules behind the skip gate: linear warm-up from 0, then cosine to 0
    at max_steps; a step the optimizer refused leaves the schedule where it was."""
    import math
    from types import SimpleNamespace

    from train.engine import SkippingAdamW, build_scheduler

    cfg = SimpleNamespace(lr_schedule="cosine", warmup_steps=2, max_steps=10)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = SkippingAdamW([param], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg, gate=optimizer)
    seen = []
    for step in range(10):
        seen.append(scheduler.get_last_lr()[0])
        param.grad = torch.ones(1)
        optimizer.skip_next = step == 4  # a NaN step: no update, schedule held
        optimizer.step()
        scheduler.step()
    expected = [0.0, 0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in (1, 2, 2, 3, 4, 5, 6)]
    assert seen == pytest.approx(expected)
    restored = build_scheduler(SkippingAdamW([param], lr=1.0), cfg)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == scheduler.get_last_lr()
