"""GPU check of grpo.rollout_backend: vllm (needs CUDA and vLLM; nothing here runs on CPU).

On the tiny dense Qwen3-VL with LoRA adapters moved away from their start (so the merged policy
differs from the checkpoint the engine loads):

  vllm_logprob_gap_before_sync   mean |vLLM logprob - policy logprob| of vLLM's sampled tokens,
                                 teacher-forced through the policy, before any weights are sent
                                 (large: the engine still serves model.path)
  vllm_logprob_gap_after_sync    the same after ``VllmRollouts.sync`` (goal: near 0; bf16-level)
  vllm_prompt_ids_identical      1 when vLLM's prompt token ids equal ours for every prompt
  vllm_rollout_samples_per_s     completions per second, vLLM (G per prompt)
  hf_rollout_samples_per_s       the same prompts through HF generate on the policy
  vllm_vs_hf_rollout_speedup

  python scripts/gpu_check_vllm_rollouts.py [--prompts 16] [--group 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def check(prompts: int = 16, group: int = 8, max_new_tokens: int = 32,
          device: str = "cuda") -> dict[str, float]:
    """The figures above; ``device="cpu"`` runs everything but the engine (the plumbing check of
    tests/test_vllm_rollout.py) and returns the HF figure only."""
    from data.configio import load_config
    from data.processor import build_processor
    from data.prompts import PROMPT_SAMPLE, PromptBatch, load_prompt_corpus
    from data.samples import BadSampleLog
    from data.tools.synthetic import generate
    from train.config import Config
    from train.debug_models import build_tiny_checkpoint
    from train.lora import apply_lora
    from train.modeling import load_model
    from train.objectives.logprobs import token_logps
    from train.objectives.rollout import generate_rollouts

    root = Path(tempfile.mkdtemp(prefix="gpu_check_vllm-"))
    processor = build_processor()
    model_path = build_tiny_checkpoint(root / "dense", "dense", 0, processor)
    corpus = generate(root / "data", train_per_task=prompts, eval_per_task=0, seed=0,
                      tasks=("grounding",))
    dtype = "bfloat16" if device == "cuda" else "float32"
    overrides = [f"model.path={model_path}", f"data.train={corpus['train']}",
                 "train.objective=grpo", f"grpo.group_size={group}",
                 f"grpo.max_new_tokens={max_new_tokens}", f"model.dtype={dtype}",
                 "data.vision.min_pixels=4096", "data.vision.max_pixels=65536"]
    if device == "cuda":
        overrides.append("grpo.rollout_backend=vllm")
    cfg = load_config(Config, None, overrides)
    prompt_corpus = load_prompt_corpus(cfg.data, processor, BadSampleLog(),
                                       max_new_tokens=max_new_tokens)
    examples = [prompt_corpus.encode(i) for i in range(prompts)]
    samples = [e.pop(PROMPT_SAMPLE) for e in examples]
    batch = PromptBatch(examples, samples, [s.id for s in samples])

    policy = apply_lora(load_model(str(model_path), dtype), cfg.lora, cfg.train).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # adapters away from their start: the merged policy != model.path
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype))

    started = time.perf_counter()
    hf = generate_rollouts(policy, batch.examples, cfg.grpo, processor.tokenizer)
    figures = {"hf_rollout_samples_per_s": len(hf) / (time.perf_counter() - started)}
    if device != "cuda":
        return figures

    from train.objectives.rollout_vllm import VllmRollouts

    def gap(rollouts) -> float:
        """Mean |vLLM's logprob - the policy's| over the sampled completion tokens."""
        rows = {k: v.to(device) for k, v in rollouts.rows.items()}
        with torch.no_grad():
            logits = policy(**{k: v for k, v in rows.items() if k != "labels"}).logits
        ours, mask = token_logps(logits / cfg.grpo.temperature, rows["labels"])
        theirs = torch.zeros_like(ours)
        for i, logprobs in enumerate(rollouts.logprobs):
            theirs[i, mask[i].nonzero().squeeze(-1)[:len(logprobs)]] = torch.tensor(
                logprobs, device=device)
        return float(((ours - theirs).abs() * mask).sum() / mask.sum())

    engine = VllmRollouts(str(model_path), processor, cfg.grpo, cfg.data.vision, dtype, 1,
                          logprobs=True)
    figures["vllm_logprob_gap_before_sync"] = gap(engine.generate(batch, seed=1))
    engine.sync(policy)
    started = time.perf_counter()
    rollouts = engine.generate(batch, seed=1)  # raises if a prompt's ids differ from ours
    figures["vllm_rollout_samples_per_s"] = len(rollouts) / (time.perf_counter() - started)
    figures["vllm_logprob_gap_after_sync"] = gap(rollouts)
    figures["vllm_prompt_ids_identical"] = 1
    figures["vllm_vs_hf_rollout_speedup"] = (figures["vllm_rollout_samples_per_s"]
                                             / figures["hf_rollout_samples_per_s"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    for name, value in check(args.prompts, args.group).items():
        print(f"{name}={value:.4g}")


if __name__ == "__main__":
    main()
