"""Activation-memory switches (train/activations.py): checkpointing of the language model and of
the vision tower on their own, CPU offload of checkpointed inputs, tiled MLP. Each gives the loss
and gradients of the plain model, dense and MoE, LoRA and full fine-tuning, and demonstrably does
what it says (layers recomputed, inputs copied to the host, MLPs run tile by tile)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from train import activations
from train.config import LoraConfig, ModelConfig, MoeConfig, TrainConfig
from train.export.verify import verification_inputs
from train.moe import RouterLosses
from train.trainer import build_model

# float32 on CPU. Checkpointing and offload replay the same ops: measured bitwise equal (loss
# and gradients). Tiling sums weight gradients tile by tile instead of in one matmul: loss
# bitwise equal, gradients measured <= 6e-7 relative to each tensor's largest entry.
LOSS_TOL = 1e-6
GRAD_REL_TOL = 1e-5
TILE = 7  # tokens per MLP tile: the 114-token sample runs in 17 tiles, the last one short

SWITCHES = {
    "text_ckpt": dict(gradient_checkpointing=True, vision_gradient_checkpointing=False),
    "vision_ckpt": dict(gradient_checkpointing=False, vision_gradient_checkpointing=True),
    "ckpt_offload": dict(gradient_checkpointing=True, activation_offload=True),
    "tiled_mlp": dict(tiled_mlp_tokens=TILE),
    "all": dict(gradient_checkpointing=True, activation_offload=True, tiled_mlp_tokens=TILE),
}


@pytest.fixture(scope="module")
def inputs(processor):
    batch = verification_inputs(processor)
    labels = batch["input_ids"].clone()
    labels[:, :20] = -100  # a prompt that is not trained on
    return {**batch, "labels": labels}


def _build(path, lora: bool, **model_keys):
    """The model as training builds it (trainer.build_model), from config sections."""
    # The MLP LoRA too: tiling must replay peft's layers (and its expert-parameter context).
    targets = ["llm_attn", "vision", "merger", "experts" if "moe" in str(path) else "llm_mlp"]
    cfg = SimpleNamespace(model=ModelConfig(path=str(path), **model_keys),
                          lora=LoraConfig(enabled=lora, r=4, alpha=8, targets=targets),
                          train=TrainConfig())
    torch.manual_seed(0)  # the same LoRA A matrices in every build
    return build_model(cfg).train()


def _step(model, inputs, router: RouterLosses | None = None):
    loss = model(**inputs).loss
    if router is not None:
        loss = loss + router.loss().total
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    return loss.item(), grads


def _assert_same(got, expected):
    (loss, grads), (loss_ref, grads_ref) = got, expected
    assert abs(loss - loss_ref) <= LOSS_TOL
    assert grads.keys() == grads_ref.keys()
    assert any(g.abs().sum() > 0 for g in grads_ref.values())
    for name, ref in grads_ref.items():
        scale = max(ref.abs().max().item(), 1e-30)
        assert (grads[name] - ref).abs().max().item() <= GRAD_REL_TOL * scale, name


@pytest.mark.parametrize("switch", list(SWITCHES))
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_switch_gives_the_plain_loss_and_gradients(tiny, inputs, kind, lora, switch):
    expected = _step(_build(tiny[kind], lora), inputs)
    _assert_same(_step(_build(tiny[kind], lora, **SWITCHES[switch]), inputs), expected)


def _forward_counts(model, inputs) -> dict[str, int]:
    """How often a decoder layer's and a vision block's MLP start in one training step (2 = once
    in the forward and once recomputed in the backward). Pre-hooks: a recompute stops as soon as
    it has what the backward needs, before the MLP returns, so forward hooks would not fire."""
    counts = {"text": 0, "vision": 0}
    text = model.get_submodule("model.language_model.layers.0.mlp")
    vision = model.get_submodule("model.visual.blocks.0.mlp")
    text.register_forward_pre_hook(lambda *_: counts.__setitem__("text", counts["text"] + 1))
    vision.register_forward_pre_hook(lambda *_: counts.__setitem__("vision", counts["vision"] + 1))
    model(**inputs).loss.backward()
    return counts


@pytest.mark.parametrize("keys,expected", [
    (dict(), {"text": 1, "vision": 1}),
    (dict(gradient_checkpointing=True), {"text": 2, "vision": 2}),
    (dict(gradient_checkpointing=True, vision_gradient_checkpointing=False), {"text": 2, "vision": 1}),
    (dict(vision_gradient_checkpointing=True), {"text": 1, "vision": 2}),
])
def test_vision_checkpointing_switches_on_its_own(tiny, inputs, keys, expected):
    assert _forward_counts(_build(tiny["dense"], False, **keys), inputs) == expected


def test_offload_holds_every_checkpointed_input_as_a_host_copy(tiny, inputs, monkeypatch):
    held = []
    to_host = activations._to_host

    def spy(t):
        copy = to_host(t)
        held.append((t.data_ptr(), copy.data_ptr(), copy.device.type))
        return copy

    monkeypatch.setattr(activations, "_to_host", spy)
    model = _build(tiny["dense"], True, gradient_checkpointing=True,
                   vision_gradient_checkpointing=False, activation_offload=True)
    model(**inputs).loss.backward()
    # one hidden-states input per decoder layer (2), none for the unchecked vision blocks
    assert len(held) == 2
    assert all(src != dst and device == "cpu" for src, dst, device in held)


def test_tiled_mlp_never_runs_more_than_a_tile(tiny, inputs):
    seen = []
    model = _build(tiny["dense"], False, tiled_mlp_tokens=TILE)
    up = model.get_submodule("model.language_model.layers.0.mlp.up_proj")
    up.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    model(**inputs).loss.backward()
    tokens = inputs["input_ids"].numel()
    tiles = -(-tokens // TILE)
    assert max(seen) == TILE and sum(seen) == 2 * tokens  # forward + recompute
    assert len(seen) == 2 * tiles


def test_tiled_moe_routes_once_and_keeps_the_router_losses(tiny, inputs):
    moe_cfg = MoeConfig(aux_loss_coef=0.05, z_loss_coef=0.01)
    results, gate_calls = [], []
    for keys in (dict(), dict(tiled_mlp_tokens=TILE)):
        model = _build(tiny["moe"], True, **keys)
        router = RouterLosses.attach(model, moe_cfg)
        gate = model.get_submodule("base_model.model.model.language_model.layers.0.mlp.gate")
        calls = []
        gate.register_forward_pre_hook(lambda m, args, calls=calls: calls.append(args[0].shape[0]))
        results.append(_step(model, inputs, router))
        gate_calls.append(calls)
    assert gate_calls[0] == gate_calls[1] == [inputs["input_ids"].numel()]
    _assert_same(results[1], results[0])


def test_tiled_mlp_refuses_an_unknown_mlp():
    model = torch.nn.Module()
    model.add_module("model", torch.nn.Module())
    with pytest.raises(ValueError, match="no 'model.language_model.layers.<i>.mlp' module"):
        activations.tile_mlps(model, 4)


def test_offload_without_checkpointing_is_a_config_error():
    with pytest.raises(ValueError, match="set model.gradient_checkpointing=true"):
        ModelConfig(path="x", activation_offload=True)
    ModelConfig(path="x", activation_offload=True, vision_gradient_checkpointing=True)


def test_training_run_with_every_switch_has_the_plain_losses(tiny, corpus, tmp_path):
    """Through ``python -m train``: the keys reach build_model, and 3 steps of LoRA training on
    the MoE model (router losses on) log the losses of a run with none of them."""
    from tests.helpers.launch import losses, run_train

    common = ("train.batch_size=2", "train.max_steps=3", "logging.loss_plot=false",
              "lora.targets=[llm_attn, experts, vision]", "moe.aux_loss_coef=0.01")
    switches = ("model.patch_embed=linear", "model.gradient_checkpointing=true",
                "model.vision_gradient_checkpointing=false", "model.activation_offload=true",
                "model.tiled_mlp_tokens=16")
    run_train(tiny["moe"], tmp_path / "plain", *common, "model.patch_embed=conv3d",
              data=corpus["train"])
    run_train(tiny["moe"], tmp_path / "all", *common, *switches, data=corpus["train"])
    plain, switched = losses(tmp_path / "plain"), losses(tmp_path / "all")
    assert plain.keys() == switched.keys() == {1, 2, 3}
    assert max(abs(plain[k] - switched[k]) for k in plain) <= 1e-5, (plain, switched)


def test_bench_extrapolates_the_16gb_length_conservatively():
    from tests.test_patch_embed import load_bench

    solve = load_bench().solve_tokens
    straight = [(1000, 2000), (2000, 3000), (4000, 5000)]  # 1 MB a token
    assert abs(solve(straight, 16000) - 15000) <= 1  # rounded down
    # Growing with T^2 (an attention mask, say): the quadratic fit, not the last segment's line
    # (which would claim 18000).
    curved = [(t, 1000 + t * t / 1000) for t in (1000, 2000, 4000)]
    assert abs(solve(curved, 101000) - 10000) <= 1
    assert solve(curved, 101000, linear_only=True) == 18000
