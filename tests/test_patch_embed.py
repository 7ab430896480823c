"""model.patch_embed=linear: the vision patch embedding as one matmul gives the Conv3d's outputs and
gradients, keeps the checkpoint format, and works under LoRA (train/qwen3_vl/patch_embed.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.config import LoraConfig
from train.export.verify import verification_inputs
from train.lora import apply_lora
from train.modeling import load_model
from train.qwen3_vl.names import PATCH_EMBED
from train.qwen3_vl.patch_embed import PatchConv3dAsLinear, patch_embed_convs, resolve

# Relative to the largest output: float32 sums 1536 products in another order (measured 1.4e-6);
# bfloat16 results are rounded to 8 mantissa bits either way (measured: bitwise equal on CPU).
REL_TOL = {"float32": 1e-5, "bfloat16": 2 ** -8}


@pytest.fixture(scope="module")
def inputs(processor):
    return verification_inputs(processor)


def _proj(model) -> nn.Conv3d:
    return model.get_submodule(PATCH_EMBED)


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest value (0 when both are all zero, as the LoRA A
    gradients are while B is still zero)."""
    diff = (a.float() - b.float()).abs().max().item()
    return diff / max(b.float().abs().max().item(), 1e-30) if diff else 0.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_linear_gives_the_conv3d_outputs(tiny, inputs, kind, dtype):
    conv = load_model(str(tiny[kind]), dtype, patch_embed="conv3d").eval()
    linear = load_model(str(tiny[kind]), dtype, patch_embed="linear").eval()
    assert type(_proj(conv)) is nn.Conv3d and type(_proj(linear)) is PatchConv3dAsLinear
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        embed_c, embed_l = (m.model.visual.patch_embed(pixels) for m in (conv, linear))
        logits_c, logits_l = (m(**inputs).logits for m in (conv, linear))
    assert embed_l.shape == embed_c.shape == (pixels.shape[0], 32)
    assert _rel_diff(embed_l, embed_c) <= REL_TOL[dtype]
    assert _rel_diff(logits_l, logits_c) <= REL_TOL[dtype]


def test_auto_means_linear_and_a_bad_value_is_refused(tiny):
    assert resolve("auto") == "linear"
    assert type(_proj(load_model(str(tiny["dense"])))) is PatchConv3dAsLinear
    with pytest.raises(ValueError, match="model.patch_embed must be one of auto, conv3d, linear"):
        load_model(str(tiny["dense"]), patch_embed="conv2d")


def _vision_step(model, inputs) -> tuple[float, dict[str, torch.Tensor]]:
    """Full fine-tuning of the vision tower: loss and the vision gradients of one step."""
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(".visual." in "." + name)
    labels = inputs["input_ids"].clone()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_full_fine_tuning_gradients_match_and_the_checkpoint_loads_in_plain_transformers(
        tiny, inputs, tmp_path, kind):
    from transformers import AutoModelForImageTextToText

    conv = load_model(str(tiny[kind]), patch_embed="conv3d")
    linear = load_model(str(tiny[kind]), patch_embed="linear")
    loss_c, grads_c = _vision_step(conv, inputs)
    loss_l, grads_l = _vision_step(linear, inputs)
    assert abs(loss_l - loss_c) <= 1e-5
    assert grads_l.keys() == grads_c.keys() and f"{PATCH_EMBED}.weight" in grads_l
    assert grads_l[f"{PATCH_EMBED}.weight"].abs().sum() > 0
    for name in grads_c:
        assert _rel_diff(grads_l[name], grads_c[name]) <= 1e-4, name

    # One optimizer step on the linear model, then save: same keys and shapes as the stock
    # model, and plain transformers (its Conv3d) reads back exactly the trained weights.
    with torch.no_grad():
        for p in linear.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    linear.save_pretrained(str(tmp_path / "trained"))
    plain = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "trained")).eval()
    assert type(_proj(plain)) is nn.Conv3d
    trained = linear.state_dict()
    reloaded = plain.state_dict()
    assert trained.keys() == reloaded.keys() == conv.state_dict().keys()
    for name, value in trained.items():
        assert torch.equal(reloaded[name], value), name
    ours = load_model(str(tmp_path / "trained"), patch_embed="conv3d").eval()
    with torch.no_grad():
        assert torch.equal(plain(**inputs).logits, ours(**inputs).logits)
        assert _rel_diff(linear.eval()(**inputs).logits, plain(**inputs).logits) <= 1e-5


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_lora_on_the_vision_tower_keeps_the_linear_patch_embed(tiny, inputs, kind):
    lora = LoraConfig(r=4, alpha=8, targets=["vision", "merger"], modules_to_save=["patch_embed"])
    models = {}
    for mode in ("conv3d", "linear"):
        model = load_model(str(tiny[kind]), patch_embed=mode)
        torch.manual_seed(0)  # the same random LoRA A matrices in both
        models[mode] = apply_lora(model, lora)
    # peft copies the patch embedding for modules_to_save: the copy that trains is a matmul too.
    convs = dict(patch_embed_convs(models["linear"]))
    assert convs and all(type(c) is PatchConv3dAsLinear for c in convs.values())
    assert any(".modules_to_save." in n for n in convs)
    losses, grads = {}, {}
    for mode, model in models.items():
        model.train()
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        losses[mode] = loss.item()
        grads[mode] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert abs(losses["linear"] - losses["conv3d"]) <= 1e-5
    trained = grads["linear"]
    assert any("visual.blocks" in n and ".lora_" in n and g.abs().sum() > 0 for n, g in trained.items())
    saved = [n for n in trained if "patch_embed" in n]
    assert saved and all(trained[n].abs().sum() > 0 for n in saved)
    for name in grads["conv3d"]:
        assert _rel_diff(trained[name], grads["conv3d"][name]) <= 1e-4, name


def test_an_input_that_is_not_one_kernel_takes_the_conv3d_path():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, (2, 4, 4), stride=(2, 4, 4))
    x = torch.randn(2, 3, 4, 8, 8)  # 2 x 2 x 2 output positions
    expected = conv(x)
    conv.__class__ = PatchConv3dAsLinear
    assert torch.equal(conv(x), expected)
    one = torch.randn(5, 3, 2, 4, 4)
    assert conv(one).shape == (5, 8, 1, 1, 1)
    assert _rel_diff(conv(one), nn.Conv3d.forward(conv, one)) <= 1e-5


def load_bench():
    """scripts/long_bench_model.py as a module (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts/long_bench_model.py"
    spec = importlib.util.spec_from_file_location("long_bench_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_patch_embed_figures_at_a_small_shape():
    figures = load_bench().patch_embed_figures(patches=64, hidden=48, repeats=1)
    assert figures["patch_embed_shape"] == "64x1536->48"
    assert 0 < figures["patch_embed_max_abs_diff"] <= 1e-5
    assert figures["patch_embed_max_rel_diff"] <= 1e-5
    assert figures["patch_embed_linear_vs_conv3d_speedup"] > 0
