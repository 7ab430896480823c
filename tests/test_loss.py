"""train.loss_impl: the chunked LM loss (never the full logits) equals transformers' loss and
its gradients, on padded batches and packed rows with images, a video and -100 holes, with and
without num_items_in_batch, under LoRA and full fine-tuning; fused kernels that are not
installed are refused with the fix; a short training run gives the same losses as hf."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests.helpers import sp_batches
from tests.helpers.launch import losses, run_train
from train.loss import (
    LossHead,
    chunked_loss_sum,
    plain_weight,
    resolve_loss_impl,
    shift_labels,
)


def _load(path, lora: bool = False):
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32,
                                                       attn_implementation="sdpa")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
            "q_proj", "v_proj", "gate_proj"], modules_to_save=["lm_head"]))
    model.train()
    return model


def _run(model, batch, head: LossHead | None, num_items):
    model.zero_grad(set_to_none=True)
    batch = {k: v.clone() for k, v in batch.items()}
    if num_items is not None:
        batch["num_items_in_batch"] = num_items
    out = head.forward(model, batch) if head is not None else model(**batch, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def _assert_same(a, b, rtol=1e-4, atol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert abs(loss_a.item() - loss_b.item()) <= 1e-5, (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("with_items", [True, False])
def test_chunked_equals_hf_full_finetune(tiny, layout, with_items):
    model = _load(tiny["dense"])
    config = model.config
    batch = getattr(sp_batches, f"{layout}_batch")(config, seed=1)
    items = torch.tensor(sp_batches.label_count(batch) * 2) if with_items else None
    hf = _run(model, batch, None, items)
    head = LossHead(model, "chunked", chunk_tokens=7)  # several chunks, a ragged last one
    assert plain_weight(model.lm_head) is not None  # the in-place path
    chunked = _run(model, batch, head, items)
    _assert_same(hf, chunked)
    names = chunked[1].keys()
    assert "lm_head.weight" in names and any(".visual." in n for n in names)
    assert any("deepstack" in n for n in names)  # the image / video path was exercised


def test_chunked_equals_hf_lora_moe(tiny):
    """lm_head in modules_to_save: a peft wrapper, so the checkpointed module-call path."""
    model = _load(tiny["moe"], lora=True)
    batch = sp_batches.packed_batch(model.config, seed=2)
    items = torch.tensor(sp_batches.label_count(batch))
    hf = _run(model, batch, None, items)
    chunked = _run(model, batch, LossHead(model, "chunked", chunk_tokens=16), items)
    _assert_same(hf, chunked)
    names = chunked[1].keys()
    assert any("lora_A" in n for n in names) and any("modules_to_save" in n for n in names)
    assert plain_weight(model.get_base_model().lm_head) is None


@pytest.mark.parametrize("method", ["inplace", "checkpoint"])
def test_chunked_loss_sum_matches_cross_entropy_and_skips_unlabelled_rows(method):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 13, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 13))
    labels[0, :5] = -100
    labels[1, 7] = -100
    targets = shift_labels(labels)
    assert targets[0, -1] == -100 and targets[0, 4] == labels[0, 5]
    full = torch.nn.functional.cross_entropy(head(hidden).reshape(-1, 50), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    g_full = torch.autograd.grad(full, [hidden, head.weight])
    chunked = chunked_loss_sum(head, hidden, targets, chunk_tokens=4, method=method)
    g_chunk = torch.autograd.grad(chunked, [hidden, head.weight])
    assert abs(full.item() - chunked.item()) < 1e-5
    for a, b in zip(g_full, g_chunk):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # No label at all: a zero loss that still reaches the head (DDP / ZeRO need the gradient).
    empty = chunked_loss_sum(head, hidden, torch.full_like(targets, -100), chunk_tokens=4,
                             method=method)
    assert empty.item() == 0.0
    assert torch.autograd.grad(empty, head.weight)[0].abs().sum() == 0


@pytest.mark.parametrize("impl,package", [("liger", "liger-kernel"), ("cce", "cut-cross-entropy")])
def test_fused_impl_without_its_package_names_the_fix(impl, package, monkeypatch):
    monkeypatch.setattr("train.loss.installed", lambda module: False)
    with pytest.raises(ValueError, match=f"pip install {package}.*train.loss_impl=chunked"):
        resolve_loss_impl(impl, torch.device("cpu"))


def test_auto_is_chunked_on_cpu_and_hf_is_todays_path():
    assert resolve_loss_impl("auto", torch.device("cpu")) == "chunked"
    assert resolve_loss_impl("hf", torch.device("cpu")) == "hf"
    assert LossHead.install(None, "hf", 16, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="loss_impl"):
        resolve_loss_impl("fused", torch.device("cpu"))


def test_training_with_chunked_loss_matches_hf(tiny, corpus, tmp_path):
    runs = {}
    for impl in ("hf", "chunked"):
        out = tmp_path / impl
        run_train(tiny["dense"], out, "train.max_steps=3", "train.log_every=1",
                  "logging.loss_plot=false", f"train.loss_impl={impl}",
                  "train.loss_chunk_tokens=8", data=corpus["train"])
        runs[impl] = losses(out)
    assert runs["hf"].keys() == runs["chunked"].keys() and len(runs["hf"]) == 3
    diff = max(abs(runs["hf"][k] - runs["chunked"][k]) for k in runs["hf"])
    assert diff < 1e-5, runs


def test_auto_picks_a_fused_kernel_only_where_it_applies(monkeypatch):
    monkeypatch.setattr("train.loss.installed", lambda module: module == "liger_kernel")
    cuda = torch.device("cuda")
    assert resolve_loss_impl("auto", cuda) == "liger"
    assert resolve_loss_impl("auto", cuda, zero3=True) == "chunked"  # partitioned weight
    assert resolve_loss_impl("auto", cuda, plain_head=False) == "chunked"  # peft-wrapped head
    assert resolve_loss_impl("auto", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="needs a plain lm_head.*loss_impl=chunked"):
        resolve_loss_impl("liger", cuda, plain_head=False)
    with pytest.raises(ValueError, match="ZeRO-3.*loss_impl=chunked"):
        resolve_loss_impl("liger", cuda, zero3=True)
    with pytest.raises(ValueError, match="CUDA only.*loss_impl=chunked"):
        resolve_loss_impl("liger", torch.device("cpu"))


def test_zero3_chunked_equals_hf_with_uneven_label_rows(tiny, corpus, tmp_path):
    """2 processes, ZeRO-3, LoRA with lm_head frozen (a partitioned weight): each rank's
    samples have different label counts, and 8-row chunks make the ranks' chunk counts differ
    (the loss evens out the collective gathers of the head)."""
    runs = {}
    for impl in ("hf", "chunked"):
        out = tmp_path / impl
        run_train(tiny["dense"], out, "train.max_steps=3", "logging.loss_plot=false",
                  "train.batch_size=1", "lora.modules_to_save=[]", "distributed.deepspeed=zero3",
                  f"train.loss_impl={impl}", "train.loss_chunk_tokens=8", data=corpus["train"],
                  nproc=2)
        runs[impl] = losses(out)
    assert runs["hf"].keys() == runs["chunked"].keys() and len(runs["hf"]) == 3
    diff = max(abs(runs["hf"][k] - runs["chunked"][k]) for k in runs["hf"])
    assert diff < 1e-5, runs
