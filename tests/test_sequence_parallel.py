"""Ulysses sequence parallelism (distributed.sequence_parallel) on CPU with gloo: one sample's
sequence split over 2 processes gives the losses and gradients of the unsplit model (dense and
MoE, LoRA and full fine-tuning, packed rows and padded batches, each with an image and a video,
an odd length that needs padding, and gradient checkpointing; and one unpacked video sample,
which attends plainly causally); training runs under DDP and
ZeRO-3 (+ expert parallelism) log the losses of a single-process run; bad settings are refused
with the fix.

Tolerances: float32 on CPU. The split changes only the order of some sums (attention over the
same keys, the loss summed per slice, gradients summed over ranks), so losses agree to 1e-5
(absolute) and gradients to 1e-4 relative to each tensor's largest entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import entry, losses, metrics, run, run_train, train_here
from train.config import Config
from train.data import BatchPlan, StepBatchSampler
from train.distributed import DistInfo
from train.sequence_parallel import (
    SequenceShard,
    SPGroup,
    full_attention_mask,
    new_sp_group,
)


def _equivalence(model: Path, out: Path, *args) -> dict:
    run(entry("tests.helpers.sp_equivalence", nproc=2) + [str(model), str(out), *args])
    return json.loads(out.read_text())


@pytest.mark.parametrize("kind,mode,layout,extra", [
    ("dense", "dense", "packed", ""),
    ("dense", "lora", "padded", "checkpointing"),
    ("moe", "dense", "packed", ""),
    ("moe", "lora", "padded", ""),
    ("dense", "dense", "single", ""),
    ("moe", "dense", "image", ""),
])
def test_sp2_loss_and_gradients_equal_sp1(tiny, tmp_path, kind, mode, layout, extra):
    result = _equivalence(tiny[kind], tmp_path / "r.json", mode, layout, *([extra] if extra else []))
    assert result["pad"] == (layout != "image")  # odd length: the split padded the sequence
    assert result["loss_abs_diff"] <= 1e-5, result
    assert result["grad_max_rel_diff"] <= 1e-4, result
    grads = result["grads"]
    if layout in ("single", "image"):  # one sample: plain causal attention
        # image: one frame, encoded by rank 0 while rank 1 runs a blank frame
        assert any("deepstack_merger" in g for g in grads)
    elif mode == "lora":
        assert grads and all("lora_" in g for g in grads)
    else:  # the vision tower and its deepstack mergers were reached through the slices
        assert any(".visual.blocks." in g for g in grads)
        assert any("deepstack_merger" in g for g in grads)
        if kind == "moe":
            assert any("experts" in g for g in grads)


def _train(model, data, out, nproc, *overrides):
    """A 3-step packed run; with one process, in this process (the reference)."""
    args = ("train.max_steps=3", "logging.loss_plot=false", "data.packing=true",
            "data.pack_tokens=1024", "train.batch_size=1", *overrides)
    if nproc == 1:
        train_here(model, out, *args, data=data)
    else:
        run_train(model, out, *args, data=data, nproc=nproc)
    return losses(out)


def _same(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and len(a) == 3
    assert max(abs(a[k] - b[k]) for k in a) < tol, (a, b)


def test_training_sp2_equals_one_process_ddp_and_zero3(tiny, corpus, tmp_path):
    one = _train(tiny["dense"], corpus["train"], tmp_path / "one", 1)
    sp = _train(tiny["dense"], corpus["train"], tmp_path / "sp", 2, "distributed.sequence_parallel=2")
    _same(one, sp)
    z3 = _train(tiny["dense"], corpus["train"], tmp_path / "z3", 2, "distributed.sequence_parallel=2",
                "distributed.deepspeed=zero3")
    _same(one, z3)
    rows = [json.loads(line) for line in (tmp_path / "sp/metrics.jsonl").read_text().splitlines()]
    one_rows = [json.loads(line) for line in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    # Tokens are counted once per SP group, not once per rank.
    assert [r["tokens_per_step"] for r in rows] == [r["tokens_per_step"] for r in one_rows]


def test_training_sp2_zero3_with_text_only_batches(tiny, corpus, tmp_path):
    """Unpacked batches of 1 where text-only and image samples alternate: a text-only step runs
    the vision tower on a blank frame (VisionKeepAlive), split over the group like any other."""
    from data.tools.synthetic import write_mixed_modality

    mixed = write_mixed_modality(corpus["train"], tmp_path / "mixed.json")
    plain = ("data.packing=false", "train.batch_size=1")
    one = _train(tiny["dense"], mixed, tmp_path / "one", 1, *plain)
    z3 = _train(tiny["dense"], mixed, tmp_path / "z3", 2, *plain, "distributed.sequence_parallel=2",
                "distributed.deepspeed=zero3")
    _same(one, z3)


def test_training_dense_full_finetune_sp2_zero2(tiny, corpus, tmp_path):
    """Full fine-tuning: lm_head is a plain Linear, so the in-place chunked loss runs."""
    full = ("lora.enabled=false", "train.lr=1e-3")
    one = _train(tiny["dense"], corpus["train"], tmp_path / "one", 1, *full)
    z2 = _train(tiny["dense"], corpus["train"], tmp_path / "z2", 2, *full,
                "distributed.sequence_parallel=2", "distributed.deepspeed=zero2")
    _same(one, z2)


def test_training_moe_full_finetune_sp2_zero3_expert_parallel(tiny, corpus, tmp_path):
    full = ("lora.enabled=false", "train.freeze_vision=true", "moe.log_expert_load=false",
            "moe.aux_loss_coef=0.01", "moe.z_loss_coef=0.001", "train.log_every=1")
    one = _train(tiny["moe"], corpus["train"], tmp_path / "one", 1, *full)
    ep = _train(tiny["moe"], corpus["train"], tmp_path / "ep", 2, *full,
                "distributed.sequence_parallel=2", "distributed.deepspeed=zero3",
                "distributed.expert_parallel=2")
    _same(one, ep)
    # The router losses are over the whole rows, not each rank's slice (train/moe.py).
    for key in ("moe/aux_loss", "moe/z_loss"):
        _same(*({r["step"]: r[key] for r in metrics(out)} for out in (tmp_path / "one",
                                                                      tmp_path / "ep")))


def test_dpo_sp2_equals_one_process(tiny, corpus, tmp_path):
    """DPO with LoRA, each pair's two sequences packed in one row and the row split over 2
    ranks; the reference (adapters off) runs split too. The log-probs of each rank's slice are
    summed over the group, so the losses and rewards are one process's."""
    from data.tools.synthetic_pairs import write_pairs

    pairs = write_pairs(corpus["train"], tmp_path / "pairs.jsonl")
    dpo = ("train.objective=dpo", "data.format=messages", f"data.image_root={corpus['train'].parent}")
    one = _train(tiny["dense"], pairs, tmp_path / "one", 1, *dpo)
    sp = _train(tiny["dense"], pairs, tmp_path / "sp", 2, *dpo, "distributed.sequence_parallel=2")
    _same(one, sp)
    assert abs(one[1] - 0.6931472) < 1e-5  # LoRA starts as the identity: policy = reference
    margins = [{r["step"]: r["rewards/margins"] for r in metrics(tmp_path / out)}
               for out in ("one", "sp")]
    _same(*margins)
    assert margins[0][3] != 0  # the later steps compare a trained policy with its reference


# --- pieces, in one process --------------------------------------------------------------------

def test_ranks_of_a_group_read_the_same_micro_batches():
    from data.mixture import Mixture

    class Order(Mixture):
        def __init__(self):
            pass

        def epoch_order(self, e):
            return list(range(16))

    plan = BatchPlan(Order(), batch_size=1, seed=0)
    infos = [DistInfo(r, 4, r, torch.device("cpu"), sequence_parallel=2) for r in range(4)]
    seen = [list(StepBatchSampler(plan, 2, d.dp_size, d.dp_rank, max_steps=2)) for d in infos]
    assert seen[0] == seen[1] and seen[2] == seen[3] and seen[0] != seen[2]
    assert sorted(i for s in (seen[0], seen[2]) for b in s for i in b) == list(range(8))


def test_full_mask_follows_transformers_rules(tiny):
    from transformers import AutoConfig
    from transformers.masking_utils import create_causal_mask

    config = AutoConfig.from_pretrained(str(tiny["dense"])).text_config
    config._attn_implementation = "sdpa"
    embeds = torch.zeros(2, 7, 4)
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]])
    padding = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    for positions, mask in ((packed, None), (None, padding)):
        theirs = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=mask,
                                    past_key_values=None, position_ids=positions,
                                    allow_is_causal_skip=False)
        ours = full_attention_mask(positions, mask, 2, 7, pad=1, device="cpu")
        assert ours.shape == (2, 1, 8, 8)
        real = (mask if mask is not None else torch.ones(2, 7)).bool()
        rows = real[:, None, :, None]  # queries that are real tokens: identical
        assert torch.equal(ours[..., :7, :7] & rows, theirs & rows)
        assert not ours[..., :7, 7].any()  # nobody attends to the SP pad
        assert ours[..., 7, 7].all()  # the pad sees itself: finite
    # One sequence, no padding inside it: plain causal, also with the SP pad at the end.
    assert full_attention_mask(torch.arange(6)[None], None, 1, 6, pad=1, device="cpu") is None
    assert full_attention_mask(None, torch.ones(1, 6), 1, 6, pad=1, device="cpu") is None


def test_bad_settings_are_refused_with_the_fix(tiny):
    from transformers import AutoModelForImageTextToText

    from data.configio import load_config

    base = ["model.path=x", "data.train=y.json", "distributed.sequence_parallel=2"]
    with pytest.raises(ValueError, match="attn_implementation=sdpa"):
        load_config(Config, None, base + ["model.attn_implementation=eager"])
    with pytest.raises(ValueError, match="loss_impl=chunked"):
        load_config(Config, None, base + ["train.loss_impl=hf"])
    assert load_config(Config, None, base).distributed.sequence_parallel == 2
    with pytest.raises(ValueError, match="grpo samples its completions with generate"):
        load_config(Config, None, base + ["train.objective=grpo"])
    with pytest.raises(ValueError, match="dpo.precompute_reference=false"):
        load_config(Config, None, base + ["train.objective=dpo", "dpo.precompute_reference=true"])
    with pytest.raises(ValueError, match="must divide the number of processes"):
        new_sp_group(2, 0, 3)
    with pytest.raises(ValueError, match="launch with torchrun"):
        from train.distributed import with_sequence_parallel

        with_sequence_parallel(DistInfo(0, 1, 0, torch.device("cpu")), 2)
    model = AutoModelForImageTextToText.from_pretrained(str(tiny["dense"]))
    with pytest.raises(ValueError, match="divide the model's 4 attention heads"):
        SequenceShard.install(model, SPGroup(None, 0, 3))


def test_vision_tower_per_frame_equals_whole_grid(tiny):
    """What the SP vision split relies on: a [t, h, w] grid's features are those of its t
    frames run one by one (merged and deepstack features alike)."""
    from transformers import AutoModelForImageTextToText

    from train.sp_vision import frame_owners

    model = AutoModelForImageTextToText.from_pretrained(str(tiny["dense"]))
    visual = model.model.visual
    patch_dim = model.config.vision_config.in_channels * 2 * 16 * 16
    torch.manual_seed(0)
    pixels = torch.randn(2 * 16 + 24, patch_dim)  # a 2-frame 4x4 video, then a 4x6 image
    with torch.no_grad():
        whole = visual(pixels, grid_thw=torch.tensor([[2, 4, 4], [1, 4, 6]]))
        parts = [visual(pixels[a:b], grid_thw=torch.tensor([g]))
                 for a, b, g in ((0, 16, [1, 4, 4]), (16, 32, [1, 4, 4]), (32, 56, [1, 4, 6]))]
    torch.testing.assert_close(torch.cat([p.pooler_output for p in parts]), whole.pooler_output)
    for level, feature in enumerate(whole.deepstack_features):
        torch.testing.assert_close(torch.cat([p.deepstack_features[level] for p in parts]), feature)
    assert frame_owners([16, 16, 24], 2) == [0, 0, 1]
    assert frame_owners([64], 2) == [0]  # one frame: the other rank runs a blank one
    assert frame_owners([4, 4, 4, 4], 4) == [0, 1, 2, 3]
