"""``backend: vllm``: the eval prompts served by vLLM (paged attention, continuous batching), for
GPU runs where transformers' padded batches are the bottleneck.

Scores must stay comparable with ``backend: hf``, so only the engine changes: the prompt text is
the checkpoint's own chat template rendered exactly as ``SampleEncoder.encode_prompt`` renders
it, images are decoded by ``data.media.images.load_image``, and the vision budget reaches vLLM's
Qwen3-VL processor per request in the same ``size`` form the hf path hands transformers.

vLLM serves LoRA only on the language model's linear layers, so an adapter that reaches further
(vision tower, merger, MoE experts, modules_to_save) is refused before the engine starts, with
the fix in the message, rather than failing deep in vLLM or being evaluated half-applied.

What needs no vLLM (sampling and engine arguments, the adapter check, the prompt) is a plain
function, so it is tested on machines without vLLM or a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from data.encode import prompt_text
from data.media.images import load_image
from train.qwen3_vl.names import vision_module_names

IMAGE_PAD = "<|image_pad|>"
# Images one prompt may carry (vLLM profiles memory for this many); benchmarks with more per
# question raise it with vllm: {limit_mm_per_prompt: {image: N}}.
MAX_IMAGES_PER_PROMPT = 8
# vLLM accepts only these values for max_lora_rank; an adapter's rank is rounded up to one.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# What vLLM serves no LoRA on: the vision tower and its mergers, and the MoE experts. An
# adapter's target_modules is matched, as peft would, against the vision modules of its base
# model (train.qwen3_vl.names.vision_module_names of the base's config). Experts are fused
# parameters, not modules: LoRA reaches them only by target_parameters, or by a name saying
# "experts".
NON_LLM_WORDS = ("visual", "vision", "merger", "experts")
NEEDS_VLLM = ("backend: vllm needs vLLM: pip install vllm (a CUDA build matching this torch; see "
              "https://docs.vllm.ai/en/latest/getting_started/installation/) or set backend: hf")
NEEDS_GPU = ("backend: vllm needs a CUDA GPU and torch.cuda.is_available() is False here; "
             "set backend: hf (runs on CPU too)")


def sampling_params_kwargs(gen) -> dict:
    """``vllm.SamplingParams`` arguments for a ``GenerationConfig``: greedy unless ``do_sample``,
    as ``GenerationConfig.generate_kwargs`` is for transformers."""
    kwargs = {"max_tokens": gen.max_new_tokens, "repetition_penalty": gen.repetition_penalty,
              "skip_special_tokens": True}
    if gen.do_sample:
        # top_k 0 is ours for "no cut"; -1 is vLLM's in every release.
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or -1,
                      seed=gen.seed)
        if gen.presence_penalty:  # vLLM's own definition, which eval.sampling copies for hf
            kwargs["presence_penalty"] = gen.presence_penalty
    else:
        kwargs.update(temperature=0.0, top_p=1.0, top_k=-1)
    return kwargs


def engine_kwargs(resolved, cfg) -> dict:
    """``vllm.LLM`` arguments for a resolved checkpoint; ``cfg.vllm`` is merged last, so the
    user's keys win (gpu_memory_utilization, max_model_len, tensor_parallel_size, ...)."""
    kwargs = {
        "model": resolved.model,
        # The tokenizer that goes with the processor whose chat template renders the prompts.
        "tokenizer": resolved.processor,
        "dtype": cfg.dtype,
        "seed": cfg.generation.seed,
        "trust_remote_code": False,
        # Videos are refused in vllm_prompt; 0 spares the engine profiling the video encoder.
        "limit_mm_per_prompt": {"image": MAX_IMAGES_PER_PROMPT, "video": 0},
    }
    if resolved.kind == "lora":
        from transformers import AutoConfig

        rank = check_lora_adapter(resolved.adapter, AutoConfig.from_pretrained(resolved.model))
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(rank))
    kwargs.update(cfg.vllm)
    return kwargs


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]}); "
                     f"merge the adapter with `python -m train.export` and evaluate the merged "
                     f"model, or use backend: hf")


def check_lora_adapter(adapter_dir, model_config) -> int:
    """The adapter's rank, after checking that vLLM can serve all of it: LoRA on language-model
    linear layers only, nothing vLLM would drop or scale differently from peft.

    ``model_config``: the config of the base model the adapter is applied to (its vision
    tower's module names are what target_modules must not reach)."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    vision_modules = vision_module_names(model_config)
    problems = []
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        if _regex_reaches_non_llm(targets, vision_modules):
            problems.append(f"target_modules {targets!r} reaches the vision tower, merger or "
                            f"MoE experts")
    else:
        outside = [t for t in targets if _name_reaches_non_llm(t, vision_modules)]
        if outside:
            problems.append(f"target_modules {outside} are in the vision tower, merger or "
                            f"MoE experts")
    if config.get("target_parameters"):
        problems.append(f"target_parameters {config['target_parameters']} (LoRA on fused MoE "
                        f"expert weights)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (fully trained copies "
                        f"vLLM does not load)")
    if config.get("use_dora"):
        problems.append("use_dora: true (vLLM has no DoRA)")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{key} {config[key]} (vLLM scales every layer by lora_alpha / r)")
    if problems:
        raise ValueError(f"{path}: vLLM serves LoRA only on the language model's linear layers, "
                         f"and this adapter has {'; '.join(problems)}. Merge it with "
                         f"`python -m train.export` and evaluate the merged model, or use "
                         f"backend: hf")
    return int(config["r"])


def _names_non_llm(target: str) -> bool:
    """"all-linear" (every linear layer, the vision tower's included) or a vision/expert word."""
    return target == "all-linear" or any(word in target for word in NON_LLM_WORDS)


def _name_reaches_non_llm(target: str, vision_modules: list[str]) -> bool:
    """peft's list form: a name matches modules equal to it or ending in ``.<name>``."""
    if _names_non_llm(target):
        return True
    return any(m == target or m.endswith("." + target) for m in vision_modules)


def _regex_reaches_non_llm(pattern: str, vision_modules: list[str]) -> bool:
    """peft's string form: a regex full-matched against module names."""
    if _names_non_llm(pattern):
        return True
    try:
        return any(re.fullmatch(pattern, m) for m in vision_modules)
    except re.error:
        return False  # not a valid regex: peft fails on it before vLLM would


def vllm_prompt(processor, sample, budget) -> dict:
    """One sample as a vLLM prompt: the chat-template text ``SampleEncoder.encode_prompt`` builds,
    its images as RGB PIL images and the pixel budget. Raises OSError / ValueError on input
    the runner should record as a failed sample (unreadable image, videos, placeholder count)."""
    if sample.videos:
        raise ValueError(f"{len(sample.videos)} video(s) in the sample: backend: vllm evaluates "
                         f"images only here; set backend: hf for video benchmarks")
    budget = sample.vision_budget or budget  # a shrunk sample's own budget, as the hf path uses
    text = prompt_text(processor, sample)
    prompt = {"prompt": text}
    if sample.images or IMAGE_PAD in text:
        placeholders = text.count(IMAGE_PAD)
        if placeholders != len(sample.images):
            raise ValueError(f"the prompt has {placeholders} image placeholder(s) but the sample "
                             f"lists {len(sample.images)} image(s)")
        prompt["multi_modal_data"] = {"image": [load_image(ref) for ref in sample.images]}
        # vLLM hands these to Qwen3-VL's transformers processor, whose image processor bounds
        # the resized area by size={"shortest_edge": min_pixels, "longest_edge": max_pixels}:
        # the form the hf path passes (transformers 5 deprecates min_pixels / max_pixels call
        # kwargs). Flat, it would reach the video processor too; videos are refused above.
        # Not checked against a running vLLM here (no GPU): older releases on transformers 4
        # are reported to ignore a per-call size.
        prompt["mm_processor_kwargs"] = budget.images_kwargs()
    return prompt


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMGenerator:
    """The ``eval.generate`` backend interface (``processor``, ``prepare``, ``generate``) on a
    ``vllm.LLM`` engine; one process, sharded by the ``vllm.tensor_parallel_size`` key."""

    def __init__(self, resolved, cfg):
        import torch

        if not vllm_available():
            raise RuntimeError(NEEDS_VLLM)
        if not torch.cuda.is_available():
            raise RuntimeError(NEEDS_GPU)
        from vllm import LLM, SamplingParams

        from train.modeling import load_processor

        kwargs = engine_kwargs(resolved, cfg)  # checks a LoRA adapter before the engine starts
        self.processor = load_processor(resolved.processor)
        self.lora_request = None
        if resolved.kind == "lora":
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, resolved.adapter)
        self.gen, self.make_params = cfg.generation, SamplingParams
        self.llm = LLM(**kwargs)

    def prepare(self, sample, budget) -> dict:
        return vllm_prompt(self.processor, sample, budget)

    def generate(self, prepared: list[dict]) -> list[str]:
        # Built per call: samples_per_item moves generation.seed between passes.
        params = self.make_params(**sampling_params_kwargs(self.gen))
        outputs = self.llm.generate(prepared, params, lora_request=self.lora_request,
                                    use_tqdm=False)
        return [out.outputs[0].text for out in outputs]
