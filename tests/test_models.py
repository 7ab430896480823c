"""Tiny checkpoints load like hub checkpoints, by config; forward/backward and LoRA work."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from data.encode import SampleEncoder, VisionBudget, collate
from data.sources import load_llava_json
from train.config import LoraConfig
from train.lora import apply_lora
from train.modeling import load_model
from train.qwen3_vl.names import VISUAL, vision_module_names
from train.qwen3_vl.shapes import qwen3_vl_8b_config


@pytest.mark.parametrize("kind,cls", [("dense", "Qwen3VLForConditionalGeneration"),
                                      ("moe", "Qwen3VLMoeForConditionalGeneration")])
def test_class_comes_from_config_not_folder_name(tiny, tmp_path, kind, cls):
    # A misleading folder name must not matter: dense weights in a folder named like the MoE.
    misleading = "Qwen3-VL-30B-A3B-Instruct" if kind == "dense" else "Qwen3-VL-8B-Instruct"
    path = tmp_path / misleading
    shutil.copytree(tiny[kind], path)
    assert type(load_model(str(path))).__name__ == cls


def test_moe_experts_stored_in_hub_layout_and_reload_exactly(tiny, tmp_path):
    from transformers import AutoModelForImageTextToText

    from data.processor import build_processor
    from train.debug_models import build_tiny_checkpoint, tiny_config

    tensors = load_file(str(tiny["moe"] / "model.safetensors"))
    gate_up = tensors["model.language_model.layers.0.mlp.experts.gate_up_proj"]
    down = tensors["model.language_model.layers.0.mlp.experts.down_proj"]
    assert gate_up.shape == (8, 64, 2 * 48)  # (experts, hidden, 2 * moe_intermediate)
    assert down.shape == (8, 48, 64)  # (experts, moe_intermediate, hidden)

    # The rewritten file loads back to exactly the weights that were initialised.
    processor = build_processor()
    torch.manual_seed(3)
    reference = AutoModelForImageTextToText.from_config(tiny_config("moe", processor.tokenizer))
    path = build_tiny_checkpoint(tmp_path / "moe", "moe", seed=3, processor=processor)
    loaded = load_model(str(path)).state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded[name], value), name


def _vision_modules_of(model) -> list[str]:
    """The modules LoRA could adapt (Linear, Conv3d, Embedding) in the vision tower and mergers."""
    adaptable = (torch.nn.Linear, torch.nn.Conv3d, torch.nn.Embedding)
    return sorted(n for n, m in model.named_modules()
                  if n.startswith(VISUAL + ".") and isinstance(m, adaptable))


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_vision_module_names_from_the_config_are_the_models(tiny, kind):
    model = load_model(str(tiny[kind]))
    assert sorted(vision_module_names(model.config)) == _vision_modules_of(model)


def test_vision_module_names_of_the_published_8b_shape():
    import transformers

    config = qwen3_vl_8b_config()
    with torch.device("meta"):  # nothing allocated
        model = transformers.Qwen3VLForConditionalGeneration(config)
    names = vision_module_names(config)
    assert sorted(names) == _vision_modules_of(model)
    # patch embedding + position table, 27 blocks x 4 linears, merger + 3 deepstack mergers x 2
    assert len(names) == len(set(names)) == 2 + 27 * 4 + 4 * 2


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_forward_backward_with_lora_reaches_vision_and_text(tiny, corpus, processor, kind):
    model = load_model(str(tiny[kind]))
    targets = ["llm_attn", "vision", "merger"] + (["llm_mlp"] if kind == "dense" else [])
    model = apply_lora(model, LoraConfig(r=4, alpha=8, targets=targets))
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 256 * 256))
    batch = collate([enc.encode(s) for s in load_llava_json(corpus["train"])[:2]],
                    processor.tokenizer.pad_token_id)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any("visual.blocks" in n and g.abs().sum() > 0 for n, g in grads.items())
    assert any("language_model" in n and g.abs().sum() > 0 for n, g in grads.items())


def test_lora_target_matching_nothing_fails_clearly(tiny):
    model = load_model(str(tiny["moe"]))
    with pytest.raises(ValueError, match="match no module"):
        apply_lora(model, LoraConfig(targets=["llm_mlp"]))  # MoE has fused experts, no dense MLP
