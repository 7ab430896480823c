"""backend: vllm. Everything but the engine runs here without vLLM: sampling and engine arguments,
the LoRA adapter check, the prompts, and the clear refusal on a machine without vLLM or a GPU.
The engine itself is compared with the hf backend only where vLLM and a GPU are present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from data.config import VisionBudget
from data.encode import SampleEncoder
from data.media.images import MediaError
from data.samples import Sample
from eval.checkpoints import ResolvedCheckpoint, resolve_checkpoint
from eval.config import CheckpointSpec, EvalConfig, GenerationConfig, TaskSpec
from eval.vllm_backend import (VLLMGenerator, check_lora_adapter, engine_kwargs, sampling_params_kwargs,
                               vllm_available, vllm_prompt)
from train.qwen3_vl.shapes import qwen3_vl_8b_config

VLLM_ON_GPU = vllm_available() and torch.cuda.is_available()


def _cfg(**kwargs) -> EvalConfig:
    return EvalConfig(checkpoints=[CheckpointSpec(name="c", path="unused")],
                      tasks=[TaskSpec(name="synthetic_vqa", data="unused")], **kwargs)


def _image(path: Path, size=(96, 64), mode="RGB", color="red") -> str:
    Image.new(mode, size, color).save(path)
    return str(path)


def _sample(sid: str, images: list[str], question: str = "What is shown?") -> Sample:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return Sample(id=sid, images=images, messages=[
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}])


# --- sampling and engine arguments -------------------------------------------------------------

def test_sampling_params_greedy_and_sampling():
    greedy = sampling_params_kwargs(GenerationConfig(max_new_tokens=32, repetition_penalty=1.1,
                                                     temperature=0.7, top_k=5, seed=9))
    assert greedy == {"max_tokens": 32, "repetition_penalty": 1.1, "skip_special_tokens": True,
                      "temperature": 0.0, "top_p": 1.0, "top_k": -1}  # sampling keys unused
    sampled = sampling_params_kwargs(GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9,
                                                      seed=9))
    assert sampled == {"max_tokens": 64, "repetition_penalty": 1.0, "skip_special_tokens": True,
                       "temperature": 0.7, "top_p": 0.9, "top_k": -1, "seed": 9}  # top_k 0: no cut
    assert sampling_params_kwargs(GenerationConfig(do_sample=True, top_k=20))["top_k"] == 20


def test_engine_kwargs_user_keys_win():
    resolved = ResolvedCheckpoint(model="/m", adapter=None, processor="/p", kind="full", arch="dense")
    cfg = _cfg(dtype="bfloat16", generation=GenerationConfig(seed=3),
               vllm={"gpu_memory_utilization": 0.5, "seed": 11,
                     "limit_mm_per_prompt": {"image": 2, "video": 0}})
    kwargs = engine_kwargs(resolved, cfg)
    assert kwargs == {"model": "/m", "tokenizer": "/p", "dtype": "bfloat16", "seed": 11,
                      "trust_remote_code": False, "gpu_memory_utilization": 0.5,
                      "limit_mm_per_prompt": {"image": 2, "video": 0}}


def test_engine_kwargs_lora_enables_adapters_at_a_rank_vllm_accepts(tiny, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "target_modules": ["q_proj", "v_proj"]}))
    base = str(tiny["dense"])  # the adapter is checked against its base model's config
    resolved = ResolvedCheckpoint(model=base, adapter=str(tmp_path), processor=base, kind="lora",
                                  arch="dense")
    kwargs = engine_kwargs(resolved, _cfg())
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 1, 8)
    assert engine_kwargs(resolved, _cfg(vllm={"max_lora_rank": 64}))["max_lora_rank"] == 64
    assert "enable_lora" not in engine_kwargs(
        ResolvedCheckpoint("/m", None, "/m", "base", "dense"), _cfg())


# --- LoRA adapters vLLM can serve ----------------------------------------------------------------

def _saved_adapter(tiny, kind: str, out: Path, **lora) -> Path:
    """An adapter saved by the repo's own LoRA wrap (train.lora) on a tiny checkpoint."""
    from train.config import LoraConfig
    from train.lora import apply_lora
    from train.modeling import load_model

    wrapped = apply_lora(load_model(str(tiny[kind])), LoraConfig(**lora))
    wrapped.save_pretrained(str(out))
    return out


def _base_config(tiny, kind: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny[kind])


def test_the_repos_default_language_only_adapter_passes(tiny, tmp_path):
    dense = _saved_adapter(tiny, "dense", tmp_path / "a", r=16)
    moe = _saved_adapter(tiny, "moe", tmp_path / "b", r=8, targets=["llm_attn"])
    assert check_lora_adapter(dense, _base_config(tiny, "dense")) == 16
    assert check_lora_adapter(moe, _base_config(tiny, "moe")) == 8


@pytest.mark.parametrize("lora, what", [
    (dict(targets=["llm_attn", "vision"]), "vision tower"),
    (dict(targets=["llm_attn", "merger"]), "vision tower"),
    (dict(targets=["llm_attn", "experts"]), "target_parameters"),
    (dict(targets=["llm_attn"], modules_to_save=["lm_head"]), "modules_to_save"),
])
def test_adapters_reaching_beyond_the_language_model_are_refused(tiny, tmp_path, lora, what):
    kind = "moe" if "experts" in lora["targets"] else "dense"
    adapter = _saved_adapter(tiny, kind, tmp_path / "a", **lora)
    with pytest.raises(ValueError, match=what) as e:
        check_lora_adapter(adapter, _base_config(tiny, kind))
    assert str(adapter / "adapter_config.json") in str(e.value)
    assert "python -m train.export" in str(e.value) and "backend: hf" in str(e.value)


@pytest.mark.parametrize("config, ok", [
    ({"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}, True),
    ({"target_modules": r".*language_model.*\.(q_proj|v_proj)"}, True),
    ({"target_modules": ["q_proj", "qkv"]}, False),  # the vision blocks' attention
    ({"target_modules": ["linear_fc1"]}, False),  # vision MLP and mergers
    ({"target_modules": r".*\.proj"}, False),  # matches model.visual.blocks.N.attn.proj
    ({"target_modules": "all-linear"}, False),
    ({"target_modules": ["model.visual.blocks.0.attn.qkv"]}, False),
    ({"target_modules": ["blocks.26.attn.qkv"]}, False),  # the published 8B's last block
    ({"target_modules": r".*blocks\.2[0-6]\.mlp\.linear_fc2"}, False),
    ({"target_modules": ["pos_embed"]}, False),  # the vision position table
    ({"target_modules": ["mlp.experts.0.gate_proj"]}, False),  # named experts
    ({"target_modules": ["q_proj"], "target_parameters": ["mlp.experts.down_proj"]}, False),
    ({"target_modules": ["q_proj"], "use_dora": True}, False),
    ({"target_modules": ["q_proj"], "rank_pattern": {"q_proj": 4}}, False),
])
def test_adapter_configs(tmp_path, config, ok):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, **config}))
    base = qwen3_vl_8b_config()  # 27 vision blocks, 3 deepstack mergers
    if ok:
        assert check_lora_adapter(tmp_path, base) == 16
    else:
        with pytest.raises(ValueError, match="adapter_config.json: vLLM serves LoRA only"):
            check_lora_adapter(tmp_path, base)


# --- prompts ---------------------------------------------------------------------------------

def test_prompt_is_the_hf_paths_text_with_rgb_images_and_the_budget(processor, tmp_path):
    budget = VisionBudget(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16)
    images = [_image(tmp_path / "a.png"), _image(tmp_path / "b.png", mode="L", color=128),
              _image(tmp_path / "c.png", mode="RGBA")]
    sample = _sample("s", images)
    prompt = vllm_prompt(processor, sample, budget)

    text = processor.apply_chat_template(sample.prompt_messages(), tokenize=False,
                                         add_generation_prompt=True)
    assert prompt["prompt"] == text  # what SampleEncoder.encode_prompt templates
    assert text.count("<|image_pad|>") == 3 and text.endswith("<|im_start|>assistant\n")
    assert "a square" not in text  # the reference answer is not in the prompt
    pics = prompt["multi_modal_data"]["image"]
    assert len(pics) == 3 and all(isinstance(p, Image.Image) and p.mode == "RGB" for p in pics)
    assert pics[0].size == (96, 64)
    assert prompt["mm_processor_kwargs"] == {"size": {"shortest_edge": 4096, "longest_edge": 16384}}

    # The hf path encodes the same text: its ids are that text's, each image pad expanded.
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = SampleEncoder(processor, budget).encode_prompt(sample)["input_ids"].tolist()
    collapsed = [t for i, t in enumerate(ids) if not (t == pad and i and ids[i - 1] == pad)]
    assert len(ids) > len(collapsed)
    assert collapsed == processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    # A shrunk sample's own budget wins, as on the hf path.
    small = VisionBudget(min_pixels=32 * 32, max_pixels=32 * 32 * 4)
    sample.vision_budget = small
    assert vllm_prompt(processor, sample, budget)["mm_processor_kwargs"]["size"]["longest_edge"] == 4096


def test_text_only_prompt_has_no_multimodal_data(processor):
    prompt = vllm_prompt(processor, _sample("t", []), VisionBudget())
    assert set(prompt) == {"prompt"} and prompt["prompt"].endswith("<|im_start|>assistant\n")


def test_bad_inputs_are_per_sample_errors(processor, tmp_path):
    budget = VisionBudget()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    # MediaError (a ValueError, which the runner records per sample) names the file and why.
    with pytest.raises(MediaError, match="not an image file.*broken.png"):
        vllm_prompt(processor, _sample("b", [str(tmp_path / "broken.png")]), budget)
    with pytest.raises(MediaError, match="image file not found.*missing.png"):
        vllm_prompt(processor, _sample("m", [str(tmp_path / "missing.png")]), budget)
    mismatch = _sample("x", [_image(tmp_path / "a.png")])
    mismatch.images.append(str(tmp_path / "a.png"))  # two images, one placeholder
    with pytest.raises(ValueError, match="1 image placeholder"):
        vllm_prompt(processor, mismatch, budget)
    video = _sample("v", [])
    video.videos = ["clip.mp4"]
    with pytest.raises(ValueError, match="backend: hf"):
        vllm_prompt(processor, video, budget)


# --- without vLLM or a GPU -------------------------------------------------------------------

@pytest.mark.skipif(VLLM_ON_GPU, reason="vLLM and a GPU are present")
def test_no_vllm_or_no_gpu_is_a_clear_error(tiny, monkeypatch):
    import eval.vllm_backend as backend

    resolved = resolve_checkpoint(str(tiny["dense"]))
    expected = "pip install vllm" if not vllm_available() else "needs a CUDA GPU"
    with pytest.raises(RuntimeError, match=expected) as e:
        VLLMGenerator(resolved, _cfg(backend="vllm"))
    assert "backend: hf" in str(e.value)
    # vLLM installed on a machine without a GPU
    monkeypatch.setattr(backend, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*backend: hf"):
        VLLMGenerator(resolved, _cfg(backend="vllm"))


@pytest.mark.skipif(VLLM_ON_GPU, reason="vLLM and a GPU are present")
def test_eval_run_with_backend_vllm_stops_before_any_task(tiny, tmp_path):
    from data.configio import load_config
    from eval.runner import evaluate

    cfg = load_config(EvalConfig, None, [
        f"output_dir={tmp_path}/eval", f"checkpoints=[{{name: base, path: {tiny['dense']}}}]",
        f"tasks=[{{name: synthetic_vqa, data: {tmp_path}/none.jsonl}}]", "progress=false",
        "backend=vllm"])
    with pytest.raises(RuntimeError, match="backend: vllm needs"):
        evaluate(cfg)
    assert not (tmp_path / "eval/predictions").exists()


# --- on a GPU with vLLM ------------------------------------------------------------------------

@pytest.mark.skipif(not VLLM_ON_GPU, reason="needs vLLM and a CUDA GPU")
def test_vllm_greedy_replies_equal_hf(tiny, tmp_path):
    from eval.generate import HFGenerator
    from eval.runner import generate_each

    resolved = resolve_checkpoint(str(tiny["dense"]))
    cfg = _cfg(backend="vllm", dtype="float32", generation=GenerationConfig(max_new_tokens=8),
               vllm={"gpu_memory_utilization": 0.3, "max_model_len": 2048, "enforce_eager": True})
    budget = VisionBudget(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16)
    samples = [_sample("one", [_image(tmp_path / "a.png")]),
               _sample("two", [_image(tmp_path / "b.png", (64, 128), color="blue"),
                               _image(tmp_path / "c.png", color="green")], "Compare them.")]

    hf = HFGenerator(resolved, cfg, torch.device("cuda"))
    expected = [t for _, t in generate_each(hf, [(s, hf.prepare(s, budget)) for s in samples])]
    del hf
    torch.cuda.empty_cache()

    vllm = VLLMGenerator(resolved, cfg)
    got = [t for _, t in generate_each(vllm, [(s, vllm.prepare(s, budget)) for s in samples])]
    assert got == expected
