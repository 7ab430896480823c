"""Long-sequence figures on CPU (issue #14), on a tiny Qwen3-VL with the real 151,669-token
vocabulary. Prints name=value lines at the end:

  loss_peak_mb_plain / loss_peak_mb_chunked / loss_memory_ratio
        LM head + cross-entropy, forward and backward, over ``--tokens`` (8192) labelled
        positions of hidden size 64 (the tiny model's), vocabulary 151,669: transformers'
        path (full logits, then ``ForCausalLMLoss``) vs train/loss.py's chunked path
        (``--chunk`` rows of logits at a time, train.loss_chunk_tokens' default).
  chunked_loss_max_abs_diff / chunked_grad_max_rel_diff
        the same two runs: loss difference, and the largest difference of the gradients of the
        hidden states and the head's weight relative to each tensor's largest entry.
  sp2_vs_sp1_loss_max_abs_diff[_moe] / sp2_vs_sp1_grad_max_rel_diff[_moe]
        one packed row (an image sample, a video sample, a text sample; odd length) through
        the whole model split over 2 gloo processes vs unsplit (tests/helpers/sp_equivalence.py)
  sp1_peak_mb[_moe] / sp2_peak_mb_per_rank[_moe]
        forward + backward of the whole model on one ``--sp-tokens`` (8192) token row (an
        image and text), the decoder blocks trained and the embedding, head and vision tower
        frozen, the chunked loss in 64-row chunks (so fixed buffers and gradients do not hide
        the activations, which is what SP splits): one process vs each of 2
        sequence-parallel processes (the larger of the two ranks). The resident-set peak also
        holds allocator slack and per-rank copies of the whole row's embeddings and visual
        features, so next to it:
  sp1_activation_mb[_moe] / sp2_activation_mb_per_rank[_moe]
        the tensors autograd keeps for the backward pass (distinct storages, weights left
        out, counted by a saved-tensors hook): the activation memory SP divides.

How peak memory is measured: every variant runs in a fresh process (``--worker``), which
builds its inputs, then resets the kernel's high-water mark of its resident set to the current
size (``/proc/self/clear_refs`` 5; the baseline), runs the measured step and reports the new
high-water mark (VmHWM) minus the baseline. Imports, model loading and their temporary peaks
are thereby outside the figure; what the step itself added is exact (CPU tensors live in RSS).

Merged figures from scripts/long_bench_model.py (patch embedding, longest trainable
sequence) follow when that module is present (see ``other_figures``).

Run with no arguments: about 3-4 minutes on 2 CPU cores, about 20 GB of RAM free for the
plain 8k-token loss (``--tokens 4096`` needs a quarter of it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tests.helpers.launch import entry

VOCAB = 151_669
ENV = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))


# --- measuring -----------------------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def reset_peak() -> float:
    """Start a new high-water mark at the current resident set (Linux: clear_refs 5 resets
    VmHWM); returns that baseline in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def peak_mb() -> float:
    """The resident set's high-water mark since ``reset_peak`` (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_loss(variant: str, tokens: int, chunk: int, out: Path) -> None:
    """One loss variant, forward + backward; writes its peak, loss and gradients."""
    import torch

    from train.debug_models import TEXT
    from train.loss import chunked_loss_sum, shift_labels

    torch.manual_seed(0)
    hidden_size = TEXT["hidden_size"]
    head = torch.nn.Linear(hidden_size, VOCAB, bias=False)
    torch.nn.init.normal_(head.weight, std=TEXT["initializer_range"])
    hidden = torch.randn(1, tokens, hidden_size, requires_grad=True)
    labels = torch.randint(0, VOCAB, (1, tokens))
    labels[torch.rand(1, tokens) < 0.1] = -100  # holes
    items = torch.tensor(int((labels[:, 1:] != -100).sum()))
    base = reset_peak()
    if variant == "plain":
        from transformers.loss.loss_utils import ForCausalLMLoss

        loss = ForCausalLMLoss(head(hidden), labels, VOCAB, num_items_in_batch=items)
    else:
        loss = chunked_loss_sum(head, hidden, shift_labels(labels), chunk) / items
    loss.backward()
    peak = peak_mb() - base
    torch.save({"loss": loss.detach(), "hidden": hidden.grad, "weight": head.weight.grad}, out)
    print(json.dumps({"peak_mb": peak, "base_mb": base}))


def worker_sp_memory(model_dir: str, tokens: int, out: Path) -> None:
    """Under torchrun: forward + backward of one long row; world 1 = unsplit, else SP = world."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText

    from tests.helpers.sp_batches import example
    from train.loss import LossHead
    from train.sequence_parallel import SequenceShard, new_sp_group

    split = "RANK" in os.environ  # under torchrun; a plain process is the unsplit run
    if split:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if split else (0, 1)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32,
                                                       attn_implementation="sdpa")
    model.train()
    # The decoder blocks train, the embedding, head and vision tower are frozen: their fixed
    # gradients (2 x 151,669 x 64 floats) would otherwise hide the activations SP splits.
    for name, p in model.named_parameters():
        p.requires_grad_(".language_model.layers." in name)
    shard = SequenceShard.install(model, new_sp_group(world, rank, world)) if world > 1 else None
    head = LossHead(model, "chunked", 64, shard=shard)  # a small loss buffer: activations show
    g = torch.Generator().manual_seed(0)
    sample = example(model.config, g, (tokens - 100) // 2, image=[1, 8, 8])
    batch = {k: v[None] if k in ("input_ids", "labels", "mm_token_type_ids", "attention_mask") else v
             for k, v in sample.items()}
    items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):  # every distinct non-weight storage autograd keeps for the backward pass
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    base = reset_peak()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out_ = head.forward(model, {**batch, "num_items_in_batch": items})
    out_.loss.backward()
    mine = torch.tensor([peak_mb() - base, sum(saved.values()) / 2 ** 20])
    figures = [mine]
    if split:
        figures = [torch.zeros(2) for _ in range(world)]
        dist.all_gather(figures, mine)
    if rank == 0:
        out.write_text(json.dumps({"peak_mb": max(f[0].item() for f in figures),
                                   "activation_mb": max(f[1].item() for f in figures),
                                   "tokens": int(batch["input_ids"].shape[1])}))
    if split:
        dist.destroy_process_group()


# --- driving -------------------------------------------------------------------------------------

def build_models(root: Path) -> dict[str, Path]:
    """Tiny dense and MoE checkpoints with the real vocabulary (the tiny tokenizer's special ids
    lie inside it; the loss figures need no tokenizer)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from data.processor import build_processor
    from train.debug_models import tiny_config

    tokenizer = build_processor().tokenizer
    paths = {}
    for kind in ("dense", "moe"):
        config = tiny_config(kind, tokenizer)
        config.text_config.vocab_size = VOCAB
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config)
        paths[kind] = root / kind
        model.save_pretrained(str(paths[kind]))
        if kind == "moe":
            from train.qwen3_vl.state_dict import write_experts_in_hub_layout

            write_experts_in_hub_layout(paths[kind])
    return paths


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=ENV)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def loss_figures(tokens: int, chunk: int, tmp: Path) -> dict:
    import torch

    runs = {}
    for variant in ("plain", "chunked"):
        out = tmp / f"{variant}.pt"
        line = run([sys.executable, __file__, "--worker", "loss", variant, str(tokens), str(chunk),
                    str(out)]).strip().splitlines()[-1]
        runs[variant] = (json.loads(line), torch.load(out))
    (plain, p), (chunked, c) = runs["plain"], runs["chunked"]
    rel = max(((c[k] - p[k]).abs().max() / p[k].abs().max()).item() for k in ("hidden", "weight"))
    return {"loss_tokens": tokens, "loss_chunk_tokens": chunk,
            "loss_peak_mb_plain": plain["peak_mb"], "loss_peak_mb_chunked": chunked["peak_mb"],
            "loss_memory_ratio": plain["peak_mb"] / chunked["peak_mb"],
            "chunked_loss_max_abs_diff": (c["loss"] - p["loss"]).abs().item(),
            "chunked_grad_max_rel_diff": rel}


def sp_figures(models: dict[str, Path], sp_tokens: int, tmp: Path) -> dict:
    figures = {}
    for kind, suffix in (("dense", ""), ("moe", "_moe")):
        out = tmp / f"eq_{kind}.json"
        run(entry("tests.helpers.sp_equivalence", nproc=2) + [str(models[kind]), str(out), "dense", "packed"])
        eq = json.loads(out.read_text())
        figures[f"sp2_vs_sp1_loss_max_abs_diff{suffix}"] = eq["loss_abs_diff"]
        figures[f"sp2_vs_sp1_grad_max_rel_diff{suffix}"] = eq["grad_max_rel_diff"]
        for nproc in (1, 2):
            out = tmp / f"mem_{kind}_{nproc}.json"
            run(entry("scripts.bench_long", nproc=nproc) + ["--worker", "sp_memory", str(models[kind]),
                                                            str(sp_tokens), str(out)])
            mem = json.loads(out.read_text())
            if nproc == 1:
                figures[f"sp1_peak_mb{suffix}"] = mem["peak_mb"]
                figures[f"sp1_activation_mb{suffix}"] = mem["activation_mb"]
            else:
                figures[f"sp2_peak_mb_per_rank{suffix}"] = mem["peak_mb"]
                figures[f"sp2_activation_mb_per_rank{suffix}"] = mem["activation_mb"]
        figures["sp_tokens"] = mem["tokens"]
    return figures


def other_figures() -> dict:
    """=== Merged here: patch-embedding and max-token figures from scripts/long_bench_model.py
    (written separately; skipped when absent). Its ``figures()`` if it has one, else each of
    its known figure functions. ==="""
    try:
        import long_bench_model
    except ImportError:
        return {}
    if hasattr(long_bench_model, "figures"):
        return dict(long_bench_model.figures())
    figures = {}
    for name in ("patch_embed_figures", "max_tokens_figures"):
        if hasattr(long_bench_model, name):
            figures.update(getattr(long_bench_model, name)())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="positions for the loss figures")
    parser.add_argument("--chunk", type=int, default=2048, help="train.loss_chunk_tokens")
    parser.add_argument("--sp-tokens", type=int, default=8192, help="row length for SP memory")
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--skip-sp", action="store_true")
    parser.add_argument("--skip-model", action="store_true",
                        help="leave out scripts/long_bench_model.py's figures")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "loss":
            return worker_loss(rest[0], int(rest[1]), int(rest[2]), Path(rest[3]))
        return worker_sp_memory(rest[0], int(rest[1]), Path(rest[2]))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        figures = {} if args.skip_loss else loss_figures(args.tokens, args.chunk, tmp)
        if not args.skip_sp:
            figures.update(sp_figures(build_models(tmp / "models"), args.sp_tokens, tmp))
    if not args.skip_model:
        figures.update(other_figures())
    for name, value in figures.items():
        print(f"{name}={value:.6g}" if isinstance(value, float) else f"{name}={value}")


if __name__ == "__main__":
    main()
