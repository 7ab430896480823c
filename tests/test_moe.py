"""MoE router losses (train/moe.py): the formulas, transformers 5.23's own loss, hook capture."""

from __future__ import annotations

import json
import math

import pytest
import torch

from data.encode import SampleEncoder, VisionBudget, collate
from data.sources import load_llava_json
from tests.helpers import launch
from train.config import MoeConfig
from train.modeling import load_model
from train.moe import (RouterLosses, find_router_sites, load_balancing_loss, load_summary,
                       router_z_loss)

# 4 real tokens, 4 experts, top-2, plus one padding token that must not count. Logits are
# log(p) + c: softmax gives exactly p, logsumexp gives c.
PROBS = [[0.4, 0.3, 0.2, 0.1],  # -> experts 0, 1
         [0.4, 0.3, 0.2, 0.1],  # -> 0, 1
         [0.1, 0.2, 0.3, 0.4],  # -> 3, 2
         [0.4, 0.1, 0.2, 0.3],  # -> 0, 3
         [0.97, 0.01, 0.01, 0.01]]  # padding -> 0, (1)
SHIFT = [0.0, 1.0, 2.0, -1.0, 5.0]
MASK = [True, True, True, True, False]
# f = assignments / (4 tokens * 2) = [3, 2, 1, 2] / 8
# P = column means of the real rows = [1.3, 0.9, 0.9, 0.9] / 4
# aux = 4 * (3*1.3 + 2*0.9 + 1*0.9 + 2*0.9) / (8*4) = 4 * 8.4 / 32 = 1.05
HAND_AUX = 1.05
HAND_Z = (0 + 1 + 4 + 1) / 4  # mean of c^2 over the real tokens


def hand_case():
    logits = torch.tensor(PROBS).log() + torch.tensor(SHIFT)[:, None]
    return logits, torch.topk(logits, 2).indices, torch.tensor(MASK)


def test_aux_and_z_loss_equal_hand_computed_values():
    logits, experts, mask = hand_case()
    assert experts[:4].sort(-1).values.tolist() == [[0, 1], [0, 1], [2, 3], [0, 3]]
    assert load_balancing_loss(logits, experts, mask).item() == pytest.approx(HAND_AUX, abs=1e-6)
    assert router_z_loss(logits, mask).item() == pytest.approx(HAND_Z, abs=1e-5)
    # Perfect balance is 1.0 (f sums to 1 over experts, not to top_k).
    uniform = torch.zeros(4, 4)
    balanced = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])
    assert load_balancing_loss(uniform, balanced).item() == pytest.approx(1.0)


def test_transformers_523_has_one_softmax_but_pools_layers_and_scales_by_top_k():
    """transformers#45120 (double softmax) is fixed in 5.23, but its loss is not the per-layer
    formula: it pools all layers' tokens and its f sums to top_k."""
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import load_balancing_loss_func

    logits, experts, mask = hand_case()
    theirs = load_balancing_loss_func((logits,), 4, 2, mask[None].long()).item()
    assert theirs == pytest.approx(2 * HAND_AUX, abs=1e-5)  # one softmax; f sums to top_k
    double_softmax = load_balancing_loss_func((logits.softmax(-1),), 4, 2, mask[None].long())
    assert abs(double_softmax.item() - theirs) > 0.05

    # Layer 0 sends everything to experts 0/1, layer 1 to experts 2/3: both maximally
    # imbalanced. Pooled, the layers look balanced; per layer they do not.
    skew = torch.tensor([[4.0, 4.0, 0.0, 0.0]]).repeat(4, 1)
    layers = (skew, skew.flip(-1))
    pooled = load_balancing_loss_func(layers, 4, 2).item() / 2
    ours = torch.stack([load_balancing_loss(l, torch.topk(l, 2).indices) for l in layers]).mean()
    assert ours.item() > 1.8 and pooled < 1.01


@pytest.fixture(scope="module")
def batch(corpus, processor):
    """Two image samples, right-padded to the longer one."""
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 128 * 128))
    examples = [enc.encode(s) for s in load_llava_json(corpus["train"])[:2]]
    out = collate(examples, processor.tokenizer.pad_token_id)
    assert (out["attention_mask"] == 0).any(), "the test needs a padded row"
    return out


def test_hooks_match_the_model_router_outputs_and_keep_transformers_aux_out_of_loss(tiny, batch):
    model = load_model(str(tiny["moe"]))
    model.config.text_config.output_router_logits = True  # as some checkpoints ship
    reference = model(**batch)  # .loss = CE + 0.001 * transformers' own aux loss
    model.train()
    router = RouterLosses.attach(model, MoeConfig(z_loss_coef=0.01))
    assert router.layers == [0, 1] and router.aux_coef == 0.001  # the checkpoint's coefficient
    out = model(**batch)
    assert out.aux_loss is None  # transformers' aux loss is off: .loss is the LM loss alone
    lm_only = reference.loss - 0.001 * reference.aux_loss
    assert out.loss.item() == pytest.approx(lm_only.item(), rel=1e-6)
    result = router.loss()

    # Same forward with transformers' capture: our hooks saw exactly those raw logits.
    explicit = model(**batch, output_router_logits=True)
    router.loss()
    mask = batch["attention_mask"].reshape(-1).bool()
    per_layer = [(load_balancing_loss(z, torch.topk(z, 2).indices, mask), router_z_loss(z, mask))
                 for z in explicit.router_logits]
    aux = sum(a for a, _ in per_layer).item() / 2
    z = sum(b for _, b in per_layer).item() / 2
    assert result.aux == pytest.approx(aux, rel=1e-5) and result.z == pytest.approx(z, rel=1e-5)
    assert result.total.item() == pytest.approx(0.001 * aux + 0.01 * z, rel=1e-5)

    # Load: top-2 assignments of the real tokens only, from both forwards, per layer.
    load = router.pop_load()
    expected = torch.stack([torch.bincount(torch.topk(z[mask], 2).indices.reshape(-1), minlength=8)
                            for z in explicit.router_logits])
    assert torch.equal(load, 2 * expected)
    assert (load.sum(1) == 2 * 2 * int(mask.sum())).all()
    assert router.pop_load().sum() == 0  # popped means reset


def test_padding_does_not_change_losses_or_load(tiny, batch):
    model = load_model(str(tiny["moe"])).train()
    router = RouterLosses.attach(model, MoeConfig(z_loss_coef=0.01))
    one = {k: v[:1] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    n_patches = int(batch["image_grid_thw"][0].prod())
    one.update(pixel_values=batch["pixel_values"][:n_patches],
               image_grid_thw=batch["image_grid_thw"][:1])
    real = int(one["attention_mask"].sum())
    trimmed = {k: (v[:, :real] if v.dim() == 2 and v.shape[1] == one["input_ids"].shape[1] else v)
               for k, v in one.items()}
    padded = {k: (torch.cat([v, torch.full((1, 7), 0 if k != "labels" else -100,
                                           dtype=v.dtype)], 1)
                  if v.dim() == 2 and v.shape[1] == real else v) for k, v in trimmed.items()}
    padded["attention_mask"][:, real:] = 0

    model(**trimmed)
    a, load_a = router.loss(), router.pop_load()
    model(**padded)
    b, load_b = router.loss(), router.pop_load()
    assert b.aux == pytest.approx(a.aux, rel=1e-5) and b.z == pytest.approx(a.z, rel=1e-5)
    assert torch.equal(load_a, load_b)


def test_gradient_reaches_router_and_lora_with_checkpointing_not_counted_twice(tiny, batch):
    from peft import LoraConfig, get_peft_model

    model = load_model(str(tiny["moe"])).train()
    model.gradient_checkpointing_enable()
    router = RouterLosses.attach(model, MoeConfig(aux_loss_coef=1.0, z_loss_coef=0.1))
    out = model(**batch)
    router.loss().total.backward()  # the router loss alone
    gates = [s.logits_module.weight for s in router.sites]
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)
    real = int(batch["attention_mask"].sum())
    assert (router.pop_load().sum(1) == 2 * real).all()  # recomputation in backward not counted
    del out
    router.detach()

    # peft LoRA on attention and on the fused experts (target_parameters): the router is frozen,
    # the hooks still find it under peft's prefix and the loss reaches the adapters.
    model = load_model(str(tiny["moe"]))
    lora = get_peft_model(model, LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
    lora.train()
    router = RouterLosses.attach(lora, MoeConfig(aux_loss_coef=1.0, z_loss_coef=0.1))
    assert [s.layer for s in router.sites] == [0, 1]
    lora(**batch)
    router.loss().total.backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad and "self_attn" in n}
    assert grads and all(g is not None for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0


def test_eval_forwards_are_not_captured_and_dense_models_get_none(tiny, batch):
    model = load_model(str(tiny["moe"])).eval()
    router = RouterLosses.attach(model, MoeConfig())
    with torch.no_grad():
        model(**batch)
    assert router.pop_load().sum() == 0
    with pytest.raises(RuntimeError, match="no training forward"):
        router.loss()
    router.detach()

    # Load statistics only (both coefficients 0): counted, loss a constant 0.
    router = RouterLosses.attach(model.train(), MoeConfig(aux_loss_coef=0.0))
    model(**batch)
    assert router.loss().total.item() == 0 and router.loss().aux is None
    assert (router.pop_load().sum(1) == 2 * int(batch["attention_mask"].sum())).all()

    dense = load_model(str(tiny["dense"]))
    assert find_router_sites(dense) == [] and RouterLosses.attach(dense, MoeConfig()) is None
    with pytest.raises(ValueError, match="dense"):
        RouterLosses.attach(dense, MoeConfig(z_loss_coef=0.01))


def test_load_summary_reports_balance_and_idle_experts():
    counts = torch.tensor([[2, 2, 2, 2], [6, 2, 0, 0]])
    summary = load_summary(counts, layers=[0, 3])
    assert summary["moe/load_max_over_mean/layer_0"] == 1.0
    assert summary["moe/load_max_over_mean/layer_3"] == 3.0
    assert summary["moe/idle_experts/layer_3"] == 2.0
    assert summary["moe/load_max_over_mean/worst"] == 3.0
    idle = load_summary(torch.zeros(1, 4, dtype=torch.long))
    assert not any(math.isnan(v) for v in idle.values())


def test_capture_after_deepspeed_autoep_under_zero3_matches_the_plain_model(tiny, corpus, tmp_path):
    """2 processes, ZeRO-3 + AutoEP (4 of 8 experts per rank): the hooks find AutoEP's router,
    the losses and load equal the plain model's on each rank's batch, and the router gets a
    gradient without the hooks touching its partitioned weight."""
    launch.run(launch.entry("tests.helpers.zero3_autoep_router", nproc=2)
               + [str(tiny["moe"]), str(corpus["train"]), str(tmp_path)])
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["sites"] == [[0, "Linear", "TokenChoiceTopKRouter"],
                              [1, "Linear", "TokenChoiceTopKRouter"]]
        assert r["local_experts"] == [4, 4]
        assert r["aux"] == pytest.approx(r["plain_aux"], rel=1e-5)
        assert r["z"] == pytest.approx(r["plain_z"], rel=1e-5)
        assert r["load"] == r["plain_load"]
        assert r["router_weight_numel"] == 0  # partitioned by ZeRO-3: never gathered by us
        assert r["router_grad_norm"] > 0


def _split_router_losses(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a 2-process gloo group holding half of a row's router logits."""
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    logits = torch.randn(10, 6)
    choice = logits.topk(2, dim=-1).indices
    mask = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
    half = slice(rank * 5, rank * 5 + 5)
    mine = logits[half].clone().requires_grad_(True)
    group = dist.new_group([0, 1])
    aux = load_balancing_loss(mine, choice[half], mask[half], group)
    z = router_z_loss(mine, mask[half], group)
    (aux + z).backward()
    grad = mine.grad.clone()  # rows 0-4 on rank 0
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"aux": aux.item(), "z": z.item(), "grad": grad.tolist()}, f)
    dist.destroy_process_group()


def test_router_losses_over_a_split_sequence_equal_the_whole_rows(tmp_path):
    """Under sequence parallelism each rank routes a slice of the rows; the load-balancing and
    z losses (and their gradients) must still be those of the whole rows."""
    import json

    import torch.multiprocessing as mp

    from tests.helpers.launch import free_port

    out = tmp_path / "split.json"
    mp.spawn(_split_router_losses, args=(2, free_port(), str(out)), nprocs=2)
    split = json.loads(out.read_text())
    torch.manual_seed(0)
    logits = torch.randn(10, 6).requires_grad_(True)
    choice = logits.topk(2, dim=-1).indices
    mask = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
    aux, z = load_balancing_loss(logits, choice, mask), router_z_loss(logits, mask)
    (aux + z).backward()
    assert split["aux"] == pytest.approx(aux.item(), abs=1e-6)
    assert split["z"] == pytest.approx(z.item(), abs=1e-6)
    # Each rank's loss holds the group's total, so a rank's rows get their gradient from both
    # ranks' losses: twice the whole-row gradient; the ranks' average (DDP / ZeRO) halves it.
    half_rows = torch.tensor(split["grad"]) / 2
    assert torch.allclose(half_rows, logits.grad[:5], atol=1e-6)
