"""Observability: the FLOP formula behind MFU, metrics.jsonl, wandb/tensorboard, the loss curve."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from train.config import LoggingConfig
from train.progress import ProgressLog
from train.qwen3_vl.flops import (StepFlops, mfu, param_counts, peak_bf16_flops, peak_flops,
                                  sequence_lengths)
from train.qwen3_vl.shapes import qwen3_vl_8b_config, qwen3_vl_30b_a3b_config


def real_counts(model) -> dict[str, int]:
    visual = model.model.visual
    merger = sum(p.numel() for n, p in visual.named_parameters()
                 if n.startswith(("merger.", "deepstack_merger_list.")))
    vision = sum(p.numel() for p in visual.parameters()) - merger
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return {"text": total - vision - merger, "vision": vision, "merger": merger, "total": total}


def test_analytic_param_counts_equal_the_models(tiny):
    """The per-module counts the FLOP formula is built from equal the real models': the tiny
    dense and MoE checkpoints and 2-layer models of the published 8B / 30B-A3B shapes."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    configs = {kind: AutoConfig.from_pretrained(tiny[kind]) for kind in ("dense", "moe")}
    configs["8b"], configs["30b-a3b"] = qwen3_vl_8b_config(2), qwen3_vl_30b_a3b_config(2)
    for name, config in configs.items():
        with torch.device("meta"):  # nothing allocated
            model = AutoModelForImageTextToText.from_config(config)
        assert param_counts(config) == real_counts(model), name
    # All layers: the published totals, 8.77B and 31.1B parameters.
    assert round(param_counts(qwen3_vl_8b_config())["total"] / 1e7) == 877
    assert round(param_counts(qwen3_vl_30b_a3b_config())["total"] / 1e8) == 311


def test_text_flops_are_6n_plus_attention_by_hand(tiny):
    from transformers import AutoConfig

    dense, moe = (AutoConfig.from_pretrained(tiny[k]) for k in ("dense", "moe"))
    vocab = dense.text_config.vocab_size
    # hidden 64, 4 heads x 16 (kv: 2 heads), 2 layers; dense MLP 128, MoE 8 experts x 48, top 2.
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64
    n_dense = 2 * (attn + 3 * 64 * 128) + 64 * vocab
    n_moe = 2 * (attn + 64 * 8 + 2 * 3 * 64 * 48) + 64 * vocab
    # Two samples of 10 and 6 tokens: causal pairs 55 + 21; 4 FLOPs x heads x head_dim per pair
    # and layer forward, x3 for training.
    attention = 3 * 4 * 4 * 16 * 2 * (55 + 21)
    padded = {"input_ids": torch.zeros(2, 10, dtype=torch.long),
              "attention_mask": torch.tensor([[1] * 10, [1] * 6 + [0] * 4])}
    text_pos = torch.cat([torch.arange(10), torch.arange(6)])[None]
    packed = {"input_ids": torch.zeros(1, 16, dtype=torch.long),
              "position_ids": torch.cat([text_pos, text_pos, text_pos, text_pos])[:, None]}
    assert sequence_lengths(padded) == sequence_lengths(packed) == [10, 6]
    for config, n in ((dense, n_dense), (moe, n_moe)):
        flops = StepFlops(config)
        assert flops.step_flops(padded) == flops.step_flops(packed) == 6 * n * 16 + attention


@pytest.mark.parametrize("kind,media", [("dense", "image"), ("moe", "video")])
def test_forward_flops_equal_torch_flop_counter(tiny, processor, kind, media):
    """Text, vision tower (per-frame attention), merger, deepstack mergers and only the routed
    experts: the formula equals the matmul FLOPs torch counts in a real forward, exactly."""
    import numpy as np
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForImageTextToText

    rng = np.random.RandomState(0)
    if media == "image":
        image = Image.fromarray((rng.rand(64, 96, 3) * 255).astype("uint8"))
        inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>What is it? A cat."],
                           images=[image], return_tensors="pt")
    else:
        frames = (rng.rand(4, 64, 64, 3) * 255).astype("uint8")
        inputs = processor(text=["<|vision_start|><|video_pad|><|vision_end|>What happens?"],
                           videos=[frames], return_tensors="pt",
                           videos_kwargs={"do_sample_frames": False, "fps": 2.0})
    # Eager attention and the per-expert loop: plain matmuls the counter sees; sdpa's causal
    # mask is not skipped there, hence causal=False.
    extra = {"experts_implementation": "eager"} if kind == "moe" else {}
    model = AutoModelForImageTextToText.from_pretrained(tiny[kind], attn_implementation="eager", **extra)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, use_cache=False)
    grid = inputs["image_grid_thw" if media == "image" else "video_grid_thw"][0].tolist()
    assert media == "image" or grid[0] > 1  # a video with several temporal patches
    assert StepFlops(model.config).forward_flops(dict(inputs), causal=False) == counter.get_total_flops()


def test_peak_flops_table_and_override(monkeypatch):
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.5e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756.5e12
    assert peak_bf16_flops("NVIDIA H200") == 989.5e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Tesla V100-SXM2-32GB") is None
    monkeypatch.delenv("QWEN3VL_PEAK_TFLOPS", raising=False)
    assert peak_flops("cpu") is None  # MFU unknown: not logged
    monkeypatch.setenv("QWEN3VL_PEAK_TFLOPS", "100")
    assert peak_flops("cpu") == 100e12
    assert mfu(50e12, 2.0, 100e12, n_devices=1) == 0.25


def read_wandb_records(path: Path):
    """Records of a .wandb file: a 7-byte header, then LevelDB-log framed protobuf records
    (32 KiB blocks; 7-byte chunk headers: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_metrics_trackers_and_loss_curve(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    train_cfg = SimpleNamespace(log_every=2, max_steps=4, progress=False)
    logging = LoggingConfig(report_to=["wandb", "tensorboard"], run_name="obs-test")
    log = ProgressLog(out / "metrics.jsonl", train_cfg, 0, logging=logging,
                      run_config={"train": {"lr": 1e-4}}, peak_flops=10e12, world_size=2)
    steps = [  # step 3's update was skipped: a NaN loss must not poison the logged mean
        dict(loss=2.0, lr=1e-4, lrs={"llm": 1e-4, "vision": 2e-5}, grad_norm=1.5, tokens=100,
             seconds=1.0, visual_tokens=40, flops=4e12, moe={"aux_loss": 0.2}),
        dict(loss=1.0, lr=9e-5, lrs={"llm": 9e-5, "vision": 1.8e-5}, grad_norm=1.0, tokens=300,
             seconds=1.0, visual_tokens=60, flops=6e12, moe={"aux_loss": 0.4, "moe/idle_experts/layer_0": 2.0},
             skipped=1),
        dict(loss=float("nan"), lr=8e-5, lrs={"llm": 8e-5, "vision": 1.6e-5}, grad_norm=float("nan"),
             tokens=100, seconds=1.0, visual_tokens=0, flops=2e12, nan_skipped=True),
        dict(loss=0.5, lr=0.0, lrs={"llm": 0.0, "vision": 0.0}, grad_norm=0.5, tokens=100,
             seconds=1.0, visual_tokens=0, flops=2e12),
    ]
    for i, m in enumerate(steps, 1):
        log.step(i, **m)
    png = log.close()

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    first, second = rows
    assert first["loss"] == 1.5 and second["loss"] == 0.5
    assert first["lr"] == 9e-5 and first["lr_vision"] == 1.8e-5 and second["lr_vision"] == 0.0
    assert first["grad_norm"] == 1.0 and first["tokens_per_s"] == 200 and first["tokens_per_step"] == 200
    assert first["visual_tokens_per_step"] == 50 and first["moe/aux_loss"] == pytest.approx(0.3)
    assert first["moe/idle_experts/layer_0"] == 2.0  # keys already under moe/ are kept
    assert first["skipped_samples"] == 1 and second["nan_steps_skipped"] == 1
    # 10 TFLOP in 2 s on 2 devices of 10 TFLOP/s peak: 25%.
    assert first["mfu"] == pytest.approx(0.25) and first["model_tflops_per_s"] == pytest.approx(2.5)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 1.5), (4, 0.5)]
    assert [e.step for e in events.Scalars("train/mfu")] == [2, 4]

    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # offline by default, under output_dir/wandb
    history, config, names = {}, {}, []
    for record in read_wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = items
        elif kind == "run":  # the run record carries the config given to wandb.init
            names.append(record.run.display_name)
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    assert names[0] == "obs-test" and config["train"] == {"lr": 1e-4}
    assert {s: h["train/loss"] for s, h in history.items()} == {2: 1.5, 4: 0.5}
    assert history[2]["train/lr_vision"] == 1.8e-5

    assert png == out / "loss_curve.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size == (800, 600)


def test_missing_tracker_fails_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import raises
    cfg = SimpleNamespace(log_every=1, max_steps=1, progress=False)
    with pytest.raises(ImportError, match=r"pip install qwen3vl-tune\[logging\]"):
        ProgressLog(tmp_path / "metrics.jsonl", cfg, 0, logging=LoggingConfig(report_to=["wandb"]))
