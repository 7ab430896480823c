"""GRPO rollouts served by vLLM (``grpo.rollout_backend: vllm``; a CUDA GPU and vLLM).

HF ``generate`` pads a batch and decodes it token by token; on a GPU, sampling ``G`` completions
of every prompt is then most of a GRPO step. vLLM (paged attention, continuous batching) does it
several times faster. Each rank runs its own engine in its own process, colocated with training
on the same GPU (TRL's "colocate" mode): ``grpo.vllm.gpu_memory_utilization`` is the share it
takes, so it must leave room for the training state.

What stays exactly as with the hf backend:

- prompts: the text ``SampleEncoder.encode_prompt`` renders, with its images and pixel budget
  (``eval.vllm_backend.vllm_prompt``, the eval harness's vLLM path); the token ids vLLM built
  are checked against ours, so the training rows hold what was sampled from (a mismatch is an
  error naming the prompt, never a silent misalignment);
- sampling: temperature / top_p / top_k, ``max_new_tokens``, the stop tokens and the
  suppressed visual tokens of ``rollout.generate_kwargs``; a seed per prompt derived from the
  micro-batch's rollout seed, so a resumed run samples the same completions;
- training rows: ``rollout.training_rows`` of our encoded prompts + vLLM's completion ids.

Weights: the engine starts from ``model.path`` and, before each step's first rollout, is sent
the policy's current weights (``inference_weights``): LoRA merged into the base (peft's
merge, undone after), ``modules_to_save`` copies under the base names, names and layouts as
``save_pretrained`` writes them (transformers' ``revert_weight_conversion``), i.e. what vLLM
reads from a checkpoint folder. Under ZeRO-3 every rank gathers the full parameters for it.
Expert parallelism (experts split over ranks) is refused with this backend.

Only ``inference_weights``, ``sampling_kwargs`` and the refusals run without a GPU; the engine
path is checked on a GPU by ``scripts/gpu_check_vllm_rollouts.py``.
"""

from __future__ import annotations

import contextlib
import os
import weakref

import torch

from train.objectives.rollout import Rollouts, stop_token_ids, suppressed_token_ids, training_rows

# vLLM's own engine arguments a GRPO run sets unless grpo.vllm names them.
ENGINE_DEFAULTS = {"gpu_memory_utilization": 0.3, "enable_prefix_caching": True}


def check_vllm_backend(cfg) -> None:
    """One-line refusals of ``grpo.rollout_backend: vllm`` where it cannot run (a ``Config``)."""
    from eval.vllm_backend import NEEDS_GPU, NEEDS_VLLM, vllm_available

    if cfg.distributed.expert_parallel > 1:
        raise ValueError("grpo.rollout_backend=vllm sends every rank's engine the whole model; "
                         "with distributed.expert_parallel > 1 no rank holds every expert: set "
                         "distributed.expert_parallel=1 or grpo.rollout_backend=hf")
    if not vllm_available():
        raise ValueError(NEEDS_VLLM.replace("backend: vllm", "grpo.rollout_backend: vllm")
                         .replace("set backend: hf", "set grpo.rollout_backend: hf"))
    if not torch.cuda.is_available():
        raise ValueError(NEEDS_GPU.replace("backend: vllm", "grpo.rollout_backend: vllm")
                         .replace("set backend: hf", "set grpo.rollout_backend: hf"))


def sampling_kwargs(cfg, tokenizer, seed: int) -> dict:
    """``vllm.SamplingParams`` arguments for ``G`` completions of one prompt: the hf backend's
    distribution (``rollout.generate_kwargs``) and its stop and suppressed tokens."""
    return {"n": int(cfg.group_size), "temperature": float(cfg.temperature),
            "top_p": float(cfg.top_p), "top_k": int(cfg.top_k) or -1, "repetition_penalty": 1.0,
            "max_tokens": int(cfg.max_new_tokens), "stop_token_ids": stop_token_ids(tokenizer),
            "logit_bias": {i: -100.0 for i in suppressed_token_ids(tokenizer)},
            "skip_special_tokens": True, "seed": int(seed) % 2**31}


@contextlib.contextmanager
def _merged(policy: torch.nn.Module):
    """The peft model with its adapters merged into the base weights. On exit the base weights
    are put back bit for bit (peft's unmerge subtracts the delta again, which rounds: repeated
    every step, the frozen base would drift, in bf16 by an ulp a sync)."""
    if not hasattr(policy, "merge_adapter"):
        yield policy
        return
    from peft.tuners.lora import LoraLayer

    saved = [(p, p.detach().clone()) for m in policy.modules() if isinstance(m, LoraLayer)
             for p in m.get_base_layer().parameters()]
    policy.merge_adapter()
    try:
        yield policy
    finally:
        policy.unmerge_adapter()
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)


def _gathered(model: torch.nn.Module):
    """ZeRO-3: every parameter gathered on every rank (collective; changes made inside are
    dropped on exit); otherwise nothing to do."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _base_names(state: dict) -> dict:
    """A merged peft model's state dict under its base model's names: adapter weights and the
    frozen originals of ``modules_to_save`` left out, the trained copies in their place."""
    out = {}
    for name, value in state.items():
        if "lora_" in name or ".original_module." in name:
            continue
        while ".base_layer." in name:  # nested: each target parameter of experts wraps once
            name = name.replace(".base_layer.", ".")
        out[name.replace(".modules_to_save.default.", ".")] = value
    return out


@contextlib.contextmanager
@torch.no_grad()
def inference_weights(policy: torch.nn.Module):
    """Yields the policy's current weights as its checkpoint would hold them (see the module
    doc): name -> tensor as a fresh ``save_pretrained`` of the merged model writes them. The
    tensors may be the live (merged) parameters: use them inside the ``with`` block only."""
    from transformers.core_model_loading import revert_weight_conversion

    with _gathered(policy), _merged(policy) as model:
        if hasattr(model, "get_base_model"):
            base = model.get_base_model()
            state = _base_names(base.state_dict())
            # The conversions look parameters up by their checkpoint names, which peft's
            # wrappers hide: they get the same architecture without the wrappers (no memory).
            yield revert_weight_conversion(_skeleton(base), state)
        else:
            yield revert_weight_conversion(model, model.state_dict())


_SKELETONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _skeleton(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s architecture on the meta device, with the weight conversions it was loaded
    with (built once per model)."""
    if model not in _SKELETONS:
        with torch.device("meta"):
            skeleton = type(model)(model.config)
        if getattr(model, "_weight_conversions", None) is not None:
            skeleton._weight_conversions = model._weight_conversions
        _SKELETONS[model] = skeleton
    return _SKELETONS[model]


def _engine_model(llm):
    """The torch module of an in-process vLLM engine (its attribute path differs by release)."""
    paths = ("llm_engine.model_executor.driver_worker.worker.model_runner.model",  # V1
             "llm_engine.model_executor.driver_worker.model_runner.model")  # V0
    for path in paths:
        obj = llm
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    import vllm

    raise RuntimeError(f"cannot reach the model inside vLLM {vllm.__version__}'s engine to load "
                       f"new weights (tried {', '.join(paths)}); use grpo.rollout_backend: hf")


class VllmRollouts:
    """The engine of one rank and the two things GRPO asks of it: new weights, and ``G``
    completions of each prompt of a micro-batch."""

    def __init__(self, model_path: str, processor, cfg, budget, dtype: str, world_size: int,
                 logprobs: bool = False):
        # The engine's model must live in this process for load_weights to reach it.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import vllm

        from eval.vllm_backend import MAX_IMAGES_PER_PROMPT

        kwargs = {"model": model_path, "tokenizer": model_path, "dtype": dtype,
                  "trust_remote_code": False,
                  "limit_mm_per_prompt": {"image": MAX_IMAGES_PER_PROMPT, "video": 0},
                  **ENGINE_DEFAULTS, **dict(cfg.vllm)}
        if world_size > 1:  # one engine per rank inside the torchrun / deepspeed job
            kwargs.setdefault("distributed_executor_backend", "external_launcher")
        self.llm = vllm.LLM(**kwargs)
        self.processor, self.cfg, self.budget = processor, cfg, budget
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.logprobs = logprobs  # also return each sampled token's log-prob (Rollouts.logprobs)

    def sync(self, policy: torch.nn.Module) -> None:
        """Send the policy's weights to the engine (``GrpoStep`` does it once per update)."""
        with inference_weights(policy) as weights:
            _engine_model(self.llm).load_weights(weights.items())
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights

    def generate(self, prompts, seed: int) -> Rollouts:
        """``G`` completions of each prompt of ``prompts`` (a ``PromptBatch``)."""
        from vllm import SamplingParams

        from eval.vllm_backend import vllm_prompt

        group, stops = int(self.cfg.group_size), stop_token_ids(self.tokenizer)
        requests = [vllm_prompt(self.processor, s, self.budget) for s in prompts.samples]
        extra = {"logprobs": 0} if self.logprobs else {}
        params = [SamplingParams(**sampling_kwargs(self.cfg, self.tokenizer, seed + k), **extra)
                  for k in range(len(requests))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        ids, truncated, logprobs = [], [], []
        for k, out in enumerate(outputs):
            ours = prompts.examples[k]["input_ids"].tolist()
            if list(out.prompt_token_ids) != ours:
                raise RuntimeError(f"prompt {prompts.ids[k]}: vLLM tokenised it into "
                                   f"{len(out.prompt_token_ids)} ids, ours are {len(ours)} (they "
                                   f"must be identical to train on what was sampled); use "
                                   f"grpo.rollout_backend: hf")
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                stopped = completion.finish_reason == "stop"
                if stopped and (not tokens or tokens[-1] not in stops):
                    # the stop token ended it but is not in the ids: keep it, as hf does
                    eos = self.tokenizer.eos_token_id
                    tokens.append(completion.stop_reason if isinstance(completion.stop_reason, int)
                                  else eos if eos is not None else stops[0])
                ids.append(tokens)
                truncated.append(not stopped)
                if self.logprobs:  # per position {token id: Logprob}; the sampled token's
                    logprobs.append([pos[t].logprob for t, pos in
                                     zip(completion.token_ids, completion.logprobs)])
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rows = training_rows(prompts.examples, ids, group, self.tokenizer.pad_token_id)
        return Rollouts(ids, texts, truncated, rows, group, logprobs if self.logprobs else None)
