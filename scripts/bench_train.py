"""Training at scale on the embedded default, through the real entry points (``python -m train``
under torchrun, ``python -m train.export``). Prints name=value lines:

  ep_vs_noep_loss_max_abs_diff   2-process ZeRO-3 tiny MoE, AutoEP (4 of 8 experts per rank) vs none
  resume_loss_max_abs_diff       2-process ZeRO-3 tiny dense, SIGKILL at step 4, resumed vs uninterrupted
  export_logits_max_abs_diff     worst of: LoRA dense merged, ZeRO-3+EP MoE consolidated (reloaded
                                 with plain transformers vs the training-time model)
  train_tokens_per_s             1 process, tiny dense LoRA, steady-state steps
  experts_grouped_mm_tokens_per_s / experts_eager_tokens_per_s / experts_grouped_speedup
                                 one Qwen3-VL-30B-A3B-shaped MoE block, forward + backward
  mfu_<shape>, train_tokens_per_s_<shape>, max_mem_gib_<shape>   (GPU only) 8B- and 30B-A3B-shaped
                                 random-init models with fewer layers, bf16, through python -m train

Run with no arguments (about 8 minutes on 2 CPU cores, most of it the per-expert loop).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.launch import entry  # noqa: E402

CONFIG = ROOT / "configs/demo/train_lora.yaml"
ENV = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))


def train(model: Path, data: Path, out: Path, *overrides, nproc: int = 2, faults: tuple = (),
          check=True):
    """``python -m train`` (torchrun on a free port when nproc > 1, the command of
    tests/helpers/launch.py); ``faults``: tests/helpers/faults.py's options, e.g.
    ``("--kill-at-step", "4")``."""
    args = [f"model.path={model}", f"data.train={data}", f"train.output_dir={out}",
            "train.batch_size=1", "train.warmup_steps=1", "train.log_every=1", "train.progress=false",
            "lora.r=4", "lora.alpha=8", "logging.loss_plot=false", *overrides]
    proc = subprocess.run(entry("train", nproc, faults=faults) + [str(CONFIG), *args], cwd=ROOT,
                          capture_output=True, text=True, env=ENV)
    if check and proc.returncode:
        sys.exit(f"training run {out} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def metrics(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def max_loss_diff(a: Path, b: Path) -> float:
    ma, mb = metrics(a), metrics(b)
    assert ma.keys() == mb.keys(), (ma.keys(), mb.keys())
    return max(abs(ma[s]["loss"] - mb[s]["loss"]) for s in ma)


def export(checkpoint: Path, out: Path) -> float:
    proc = subprocess.run([sys.executable, "-m", "train.export", str(checkpoint), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=ENV)
    found = re.search(r"export_logits_max_abs_diff=([0-9.eE+-]+)", proc.stdout)
    if proc.returncode or not found:
        sys.exit(f"export of {checkpoint} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return float(found.group(1))


def experts_throughput(implementation: str, tokens: int, device: str, dtype) -> float:
    """Tokens/s of forward + backward through one 30B-A3B-shaped MoE block (128 experts, top-8)."""
    import torch
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextSparseMoeBlock

    from train.qwen3_vl.shapes import qwen3_vl_30b_a3b_config

    text = qwen3_vl_30b_a3b_config(num_hidden_layers=1).text_config
    text._experts_implementation = implementation
    torch.manual_seed(0)
    block = Qwen3VLMoeTextSparseMoeBlock(text).to(device=device, dtype=dtype)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, tokens, text.hidden_size, device=device, dtype=dtype, requires_grad=True)
    times = []
    for _ in range(2):  # a warm-up pass, then the measured one
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        block(x).float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return tokens / min(times[1:])


def gpu_shapes(work: Path, data: Path, layers: int) -> dict[str, float]:
    """8B- and 30B-A3B-shaped random-init models trained through the entry point in bf16."""
    import importlib.util

    from transformers import AutoModelForImageTextToText

    from data.processor import build_processor
    from train.qwen3_vl.shapes import SHAPES
    from train.qwen3_vl.state_dict import write_experts_in_hub_layout

    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    figures = {}
    processor = build_processor()
    tok = processor.tokenizer
    for name, make in SHAPES.items():
        folder = work / f"shape-{name}"
        config = make(num_hidden_layers=layers)
        # The published vocabulary size (its embedding and lm_head FLOPs), with the special-token
        # ids of the offline tokenizer.
        for attr, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                            ("vision_start_token_id", "<|vision_start|>"),
                            ("vision_end_token_id", "<|vision_end|>")):
            setattr(config, attr, tok.convert_tokens_to_ids(token))
        model = AutoModelForImageTextToText.from_config(config)
        model.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))
        if "moe" in config.model_type:
            write_experts_in_hub_layout(folder)
        del model
        out = work / f"train-{name}"
        train(folder, data, out, "lora.enabled=false", "model.dtype=bfloat16",
              f"model.attn_implementation={attn}", "model.gradient_checkpointing=true",
              "train.max_steps=8", "train.batch_size=4", nproc=1)
        rows = [r for s, r in metrics(out).items() if s > 2]
        figures[f"train_tokens_per_s_{name}"] = sum(r["tokens_per_s"] for r in rows) / len(rows)
        if all(r.get("mfu") is not None for r in rows):
            figures[f"mfu_{name}"] = sum(r["mfu"] for r in rows) / len(rows)
        if rows and "max_mem_gib" in rows[-1]:
            figures[f"max_mem_gib_{name}"] = rows[-1]["max_mem_gib"]
    figures["gpu_attn_implementation"] = attn
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--moe-tokens", type=int, default=None, help="tokens per MoE-block pass")
    parser.add_argument("--gpu-layers", type=int, default=4, help="layers of the GPU shape models")
    args = parser.parse_args()

    import torch

    from data.processor import build_processor
    from data.tools.synthetic import generate, write_mixed_modality
    from train.debug_models import build_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    processor = build_processor()
    tiny = {k: build_tiny_checkpoint(work / f"tiny-{k}", k, 0, processor) for k in ("dense", "moe")}
    corpus = generate(work / "data", train_per_task=16, eval_per_task=0)
    mixed = write_mixed_modality(corpus["train"], work / "mixed.json")
    figures: dict[str, object] = {}
    steps = f"train.max_steps={args.steps}"

    # Expert parallelism: the same losses, with each rank holding half of the experts.
    full = ["lora.enabled=false", "train.lr=1e-3", "distributed.deepspeed=zero3", steps]
    train(tiny["moe"], mixed, work / "moe-plain", *full)
    ep = train(tiny["moe"], mixed, work / "moe-ep", *full, "distributed.expert_parallel=2")
    figures["ep_vs_noep_loss_max_abs_diff"] = max_loss_diff(work / "moe-plain", work / "moe-ep")
    held = re.findall(r"holds \[(\d+)\] of (\d+) experts", ep.stdout)
    figures["ep_experts_per_rank"] = "/".join(sorted({f"{a}of{b}" for a, b in held}))

    # SIGKILL at step 4 (checkpoint at 2), resume, compare with the uninterrupted run.
    dense_full = ["lora.enabled=false", "train.lr=1e-3", "distributed.deepspeed=zero3",
                  "train.save_every=2", steps]
    train(tiny["dense"], mixed, work / "dense-full", *dense_full)
    killed = train(tiny["dense"], mixed, work / "dense-killed", *dense_full,
                   faults=("--kill-at-step", "4"), check=False)
    assert killed.returncode != 0, "the SIGKILL did not happen"
    train(tiny["dense"], mixed, work / "dense-killed", *dense_full, "train.resume=auto")
    figures["resume_loss_max_abs_diff"] = max_loss_diff(work / "dense-full", work / "dense-killed")

    # Export: LoRA merged into the base; ZeRO-3 + AutoEP shards consolidated into HF experts.
    train(tiny["dense"], corpus["train"], work / "dense-lora", steps, nproc=1)
    diffs = {"lora_dense": export(work / "dense-lora" / f"checkpoint-{args.steps}", work / "export-lora"),
             "zero3_ep_moe": export(work / "moe-ep" / f"checkpoint-{args.steps}", work / "export-ep")}
    for case, diff in diffs.items():
        figures[f"export_logits_max_abs_diff_{case}"] = diff
    figures["export_logits_max_abs_diff"] = max(diffs.values())

    # Throughput of the training loop (1 process, steady state: steps after the first two).
    out = work / "throughput"
    train(tiny["dense"], corpus["train"], out, "train.max_steps=12", "train.batch_size=4", nproc=1)
    rows = [r for s, r in metrics(out).items() if s > 2]
    figures["train_tokens_per_s"] = sum(r["tokens_per_s"] for r in rows) / len(rows)

    # Grouped-GEMM experts vs the per-expert loop, one 30B-A3B-shaped MoE block.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokens = args.moe_tokens or (8192 if device == "cuda" else 128)
    grouped = experts_throughput("grouped_mm", tokens, device, dtype)
    eager = experts_throughput("eager", tokens, device, dtype)
    figures.update(experts_device=device, experts_tokens=tokens, experts_grouped_mm_tokens_per_s=grouped,
                   experts_eager_tokens_per_s=eager, experts_grouped_speedup=grouped / eager)

    if device == "cuda":
        figures.update(gpu_shapes(work, corpus["train"], args.gpu_layers))
    for name, value in figures.items():
        print(f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}")


if __name__ == "__main__":
    main()
