"""grpo.rollout_backend: vllm. What runs without vLLM or a GPU: the weights the engine is sent
(exactly the checkpoint a merged save_pretrained writes, which is what vLLM loads from disk, and
the policy left bit for bit as it was), the sampling arguments and the start-up refusals. The
engine itself: scripts/gpu_check_vllm_rollouts.py, on a GPU with vLLM."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from data.configio import load_config
from train.config import Config, GrpoConfig, LoraConfig, TrainConfig
from train.lora import apply_lora
from train.modeling import load_model
from train.objectives.rollout import suppressed_token_ids
from train.objectives.rollout_vllm import inference_weights, sampling_kwargs

PRESETS = {"dense": ["llm_attn", "llm_mlp", "vision", "merger"], "moe": ["llm_attn", "experts"]}


def trained_lora(path, targets):
    """A LoRA policy whose adapters and saved lm_head copy are no longer at their start."""
    model = apply_lora(load_model(str(path)), LoraConfig(r=4, alpha=8, targets=targets,
                                                         modules_to_save=["lm_head"]), TrainConfig())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_sent_weights_are_the_merged_checkpoint_and_the_policy_is_unchanged(tiny, kind, tmp_path):
    policy = trained_lora(tiny[kind], PRESETS[kind])
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    merged = copy.deepcopy(policy).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    on_disk = load_file(str(tmp_path / "merged/model.safetensors"))

    with inference_weights(policy) as sent:
        assert sent.keys() == on_disk.keys()
        for name, value in on_disk.items():
            assert sent[name].shape == value.shape and torch.equal(sent[name], value), name
        # the adapters are really in: the sent lm_head is the trained copy, not the base's
        assert not torch.equal(sent["lm_head.weight"],
                               before["base_model.model.lm_head.original_module.weight"])
    for name, p in policy.named_parameters():
        assert torch.equal(p, before[name]), name  # merged and put back bit for bit
    assert not any(getattr(m, "merged", False) for m in policy.modules())


def test_sent_weights_of_a_full_fine_tune_are_its_checkpoint(tiny, tmp_path):
    model = load_model(str(tiny["moe"]))
    model.save_pretrained(tmp_path / "full")
    on_disk = load_file(str(tmp_path / "full/model.safetensors"))
    with inference_weights(model) as sent:
        assert sent.keys() == on_disk.keys()
        assert all(torch.equal(sent[k], v) for k, v in on_disk.items())


def test_sampling_arguments_match_the_hf_backend(processor):
    tok = processor.tokenizer
    cfg = GrpoConfig(group_size=8, max_new_tokens=48, temperature=0.9, top_p=0.95)
    kwargs = sampling_kwargs(cfg, tok, seed=2**40 + 5)
    assert kwargs["n"] == 8 and kwargs["max_tokens"] == 48 and kwargs["top_k"] == -1
    assert kwargs["temperature"] == 0.9 and kwargs["top_p"] == 0.95
    assert kwargs["repetition_penalty"] == 1.0 and 0 <= kwargs["seed"] < 2**31
    assert tok.convert_tokens_to_ids("<|im_end|>") in kwargs["stop_token_ids"]
    assert set(kwargs["logit_bias"]) == set(suppressed_token_ids(tok))  # no visual tokens sampled
    assert sampling_kwargs(GrpoConfig(top_k=20), tok, 0)["top_k"] == 20


def test_vllm_rollouts_are_refused_where_they_cannot_run(tiny):
    base = ["model.path=" + str(tiny["dense"]), "data.train=x.json", "train.objective=grpo",
            "grpo.rollout_backend=vllm"]
    try:
        import vllm  # noqa: F401
        has_vllm = True
    except ImportError:
        has_vllm = False
    if not (has_vllm and torch.cuda.is_available()):
        with pytest.raises(ValueError, match="grpo.rollout_backend"):
            load_config(Config, None, base)
    with pytest.raises(ValueError, match="expert_parallel"):
        load_config(Config, None, [*base, "model.path=" + str(tiny["moe"]),
                                   "distributed.deepspeed=zero3", "distributed.expert_parallel=2"])


def test_gpu_check_script_runs_up_to_the_engine():
    """scripts/gpu_check_vllm_rollouts.py on CPU: data, prompts, LoRA policy and the HF rollouts
    it compares vLLM with (the engine part needs a GPU)."""
    from scripts.gpu_check_vllm_rollouts import check

    figures = check(prompts=2, group=2, max_new_tokens=4, device="cpu")
    assert figures["hf_rollout_samples_per_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and vLLM")
def test_vllm_rollouts_follow_the_policy_after_a_sync():
    pytest.importorskip("vllm")
    from scripts.gpu_check_vllm_rollouts import check

    figures = check(prompts=8, group=4)
    assert figures["vllm_logprob_gap_after_sync"] < 0.05
    assert figures["vllm_logprob_gap_before_sync"] > 5 * figures["vllm_logprob_gap_after_sync"]
