"""Model-side figures for long sequences (issue #14); ``scripts/bench_long.py`` imports these
functions and prints their dicts. Run alone, it prints ``name=value`` lines:

  patch_embed_linear_vs_conv3d_speedup   vision patch embedding, Conv3d time / matmul time
                                         (forward, the published 8B/32B/30B-A3B shape: 3 x 2 x 16
                                         x 16 = 1536 inputs -> 1152; 2B/4B use 1024), 4096 patches
                                         (a 1024 x 1024 image), float32 on this machine's CPU
  patch_embed_fwd_bwd_speedup            the same with the weight gradient (full fine-tuning)
  patch_embed_max_abs_diff               |matmul - Conv3d| largest, float32, pixel values and
                                         weights at realistic scale (also _rel: / largest output)
  max_tokens_cpu_16gb_plain              longest sequence whose one training step (forward +
  max_tokens_cpu_16gb_chunked_ckpt       backward) stays under 16 GB peak RSS on CPU: the tiny
                                         Qwen3-VL with the real 151,669-token vocabulary, default
                                         LoRA; plain = transformers' loss (full float32 logits);
                                         chunked_ckpt = train.loss_impl=chunked (train/loss.py) +
                                         model.gradient_checkpointing + model.tiled_mlp_tokens

How the 16 GB figures are measured, and why not with a hard memory cap: RLIMIT_AS counts
address space, which torch and its allocator reserve far beyond what they touch, so a capped
step fails long before it uses the memory. Instead each length runs one step in a fresh
subprocess that reports its peak resident set (``ru_maxrss``: whole process, imports and
model included), under a watchdog that kills it above ``CHILD_LIMIT_MB`` (other jobs share
this machine). Lengths run smallest first; a length whose predicted peak would pass the
watchdog is skipped. The 16 GB length is then solved from the measured points: the smaller of
a quadratic fit (curvature clipped at >= 0, so attention or mask terms that grow with T^2 are
not missed) and the line through the last two points. Every length above the largest measured
one is an extrapolation, flagged in the output next to the measured points.

Text-only rows (the vision tower's memory does not depend on the text length), batch 1,
float32, sdpa attention, 2 threads. Plain: every position labelled (its logits cover every
position anyway). Chunked: the last ``CHUNKED_LABELLED`` positions labelled: the chunked loss
only projects labelled rows, at most ``train.loss_chunk_tokens`` (2048) at a time, so its peak
is the same for any count above that, while its time grows with the count (all 16k labelled
took 100 s on this machine); what the unlabelled rows still cost (their hidden states, 256 bytes
a row here) is measured.

About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REAL_VOCAB = 151_669
# Qwen's special-token ids (the published configs), for a config with the real vocabulary.
REAL_IDS = {"<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|vision_start|>": 151652,
            "<|vision_end|>": 151653}
CAP_MB = 16 * 1024
CHILD_LIMIT_MB = 10 * 1024
PLAIN_LENGTHS = (1024, 2048, 4096)
CHUNKED_LENGTHS = (4096, 8192, 16384)
TILE_TOKENS = 2048
CHUNKED_LABELLED = 4096


# --- patch embedding -------------------------------------------------------------------------

def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def patch_embed_figures(patches: int = 4096, hidden: int = 1152, repeats: int = 5) -> dict:
    """Conv3d vs its matmul form (train/qwen3_vl/patch_embed.py) at a published shape."""
    from torch import nn

    from train.qwen3_vl.patch_embed import PatchConv3dAsLinear

    torch.manual_seed(0)
    kernel = (2, 16, 16)
    conv = nn.Conv3d(3, hidden, kernel, stride=kernel)
    nn.init.normal_(conv.weight, std=0.02)  # Qwen3-VL's initializer_range
    linear = nn.Conv3d(3, hidden, kernel, stride=kernel)
    linear.load_state_dict(conv.state_dict())
    linear.__class__ = PatchConv3dAsLinear
    # Normalised pixels (processor mean/std 0.5): values in [-1, 1].
    pixels = torch.rand(patches, 3, *kernel) * 2 - 1

    def forward(module):
        with torch.no_grad():
            return module(pixels)

    def forward_backward(module):
        module.zero_grad(set_to_none=True)
        module(pixels).sum().backward()

    figures = {}
    conv_s, lin_s, conv_fb, lin_fb = [], [], [], []
    for _ in range(2):  # interleaved, so a load change on the machine hits both alike
        conv_s.append(_median_seconds(lambda: forward(conv), repeats))
        lin_s.append(_median_seconds(lambda: forward(linear), repeats))
        conv_fb.append(_median_seconds(lambda: forward_backward(conv), repeats))
        lin_fb.append(_median_seconds(lambda: forward_backward(linear), repeats))
    expected, got = forward(conv), forward(linear)
    diff = (got - expected).abs().max().item()
    figures["patch_embed_conv3d_ms"] = round(1000 * min(conv_s), 2)
    figures["patch_embed_linear_ms"] = round(1000 * min(lin_s), 2)
    figures["patch_embed_linear_vs_conv3d_speedup"] = round(min(conv_s) / min(lin_s), 2)
    figures["patch_embed_fwd_bwd_speedup"] = round(min(conv_fb) / min(lin_fb), 2)
    figures["patch_embed_max_abs_diff"] = float(f"{diff:.3g}")
    figures["patch_embed_max_rel_diff"] = float(f"{diff / expected.abs().max().item():.3g}")
    figures["patch_embed_shape"] = f"{patches}x1536->{hidden}"
    return figures


# --- longest sequence under 16 GB ------------------------------------------------------------

class _RealIds:
    """What train.debug_models.tiny_config reads from a tokenizer, with the real vocabulary."""
    pad_token_id, eos_token_id = 151643, 151645

    def __len__(self):
        return REAL_VOCAB

    def convert_tokens_to_ids(self, token):
        return REAL_IDS[token]


def write_real_vocab_checkpoint(out_dir: Path) -> Path:
    """The tiny dense Qwen3-VL (train/debug_models.py) with the 151,669-token vocabulary."""
    from transformers import AutoModelForImageTextToText

    from train.debug_models import tiny_config

    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(tiny_config("dense", _RealIds())).save_pretrained(
        str(out_dir))
    return out_dir


def _step(path: str, tokens: int, mode: str) -> dict:
    """One LoRA training step of ``tokens`` tokens, in this process; the peak RSS it reached."""
    from train.config import LoraConfig, ModelConfig, TrainConfig
    from train.trainer import build_model

    chunked = mode == "chunked_ckpt"
    model_cfg = ModelConfig(path=path, gradient_checkpointing=chunked,
                            tiled_mlp_tokens=TILE_TOKENS if chunked else 0)
    train_cfg = TrainConfig(loss_impl="chunked" if chunked else "hf")
    model = build_model(SimpleNamespace(model=model_cfg, lora=LoraConfig(), train=train_cfg)).train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151643, (1, tokens), generator=generator)
    labels = ids.clone()
    if chunked:
        labels[:, :-CHUNKED_LABELLED] = -100  # see the module docstring
    batch = {"input_ids": ids, "labels": labels}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if chunked:
        from train.loss import LossHead

        head = LossHead.install(model, train_cfg.loss_impl, train_cfg.loss_chunk_tokens,
                                torch.device("cpu"))
        loss = head.forward(model, batch).loss
    else:
        loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss), loss
    return {"tokens": tokens, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "before_step_mb": round(before), "seconds": round(time.perf_counter() - start, 1)}


def measure(path: Path, tokens: int, mode: str, limit_mb: int = CHILD_LIMIT_MB) -> dict:
    """``_step`` in a subprocess, killed if its resident set passes ``limit_mb``."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, __file__, "--step", str(path), str(tokens), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(ROOT))
    status = Path(f"/proc/{proc.pid}/status")
    killed = False
    while proc.poll() is None:
        try:
            rss_kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss_kb = 0
        if rss_kb > limit_mb * 1024:
            proc.kill()
            killed = True
        time.sleep(0.1)
    out, err = proc.communicate()
    if killed:
        return {"tokens": tokens, "killed_above_mb": limit_mb}
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} step at {tokens} tokens failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def solve_tokens(points: list[tuple[int, float]], cap_mb: float, linear_only: bool = False) -> int:
    """Length where the peak reaches ``cap_mb``: the smaller of the quadratic fit (curvature
    >= 0) and the line through the last two points (see the module docstring)."""
    (t1, m1), (t2, m2) = points[-2:]
    slope = max((m2 - m1) / (t2 - t1), 1e-9)
    candidates = [t2 + (cap_mb - m2) / slope]
    if linear_only:
        return int(candidates[0])
    if len(points) >= 3:
        import numpy as np

        ts = np.array([p[0] for p in points], dtype=float)
        ms = np.array([p[1] for p in points], dtype=float)
        c, b, a = np.polyfit(ts, ms, 2)
        if c > 0:
            roots = np.roots([c, b, a - cap_mb])
            real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
            if real:
                candidates.append(min(real))
    return int(min(candidates))


def max_tokens_figures(plain_lengths=PLAIN_LENGTHS, chunked_lengths=CHUNKED_LENGTHS,
                       cap_mb: float = CAP_MB, limit_mb: int = CHILD_LIMIT_MB) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_real_vocab_checkpoint(Path(tmp) / "tiny-real-vocab")
        for mode, lengths in (("plain", plain_lengths), ("chunked_ckpt", chunked_lengths)):
            points = []
            for tokens in lengths:
                if len(points) >= 2 and solve_tokens(points, limit_mb * 0.9) < tokens:
                    continue  # predicted past the watchdog: not run
                result = measure(path, tokens, mode, limit_mb)
                if "peak_rss_mb" not in result:
                    break
                points.append((tokens, result["peak_rss_mb"]))
                figures[f"max_tokens_{mode}_point_{tokens}"] = (
                    f"{result['peak_rss_mb']}MB/{result['seconds']}s")
            if len(points) < 2:
                raise RuntimeError(f"{mode}: fewer than two lengths measured under "
                                   f"{limit_mb} MB; lower the lengths")
            best = solve_tokens(points, cap_mb)
            figures[f"max_tokens_cpu_16gb_{mode}"] = best
            figures[f"max_tokens_cpu_16gb_{mode}_extrapolated"] = int(best > points[-1][0])
            figures[f"max_tokens_cpu_16gb_{mode}_linear_fit"] = solve_tokens(points, cap_mb, True)
            figures[f"max_tokens_{mode}_mb_per_1k_tokens"] = round(
                1000 * (points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0]), 1)
    return figures


def main() -> None:
    if sys.argv[1:2] == ["--step"]:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print(json.dumps(_step(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    for figures in (patch_embed_figures, max_tokens_figures):
        for name, value in figures().items():
            print(f"{name}={value}", flush=True)


if __name__ == "__main__":
    main()
