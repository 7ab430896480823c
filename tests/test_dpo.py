"""DPO: log-probs (shift, -100, chunked == full, gradients too), the losses against the published
formulas written out by hand and against TRL 1.16's own DPOTrainer loss on the same numbers,
and reference log-probs of a LoRA model with adapters disabled equal to the base model's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.trl_reference import trl_dpo_loss

from train.objectives.dpo import (
    batch_sequence_logps,
    dpo_loss,
    reference_logps,
    split_pairs,
)
from train.objectives.logprobs import sequence_logps, token_logps, token_logps_chunked

# Two pairs of per-sequence reply log-probs (sums) and their reply token counts.
PC, PR = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])  # policy chosen / rejected
RC, RR = torch.tensor([-2.0, -3.5]), torch.tensor([-2.5, -2.5])  # reference chosen / rejected
NC, NR = torch.tensor([2, 4]), torch.tensor([3, 1])


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_token_logps_shift_by_one_and_ignore_minus_100():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 1, 2, 6]])
    values, mask = token_logps(logits, labels)
    # by hand: position t scores label t+1
    expect = torch.zeros(2, 4)
    for b, t in ((0, 0), (0, 1), (1, 1), (1, 2), (1, 3)):
        expect[b, t] = torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]]
    assert torch.allclose(values, expect, atol=1e-6)
    assert mask.sum().item() == 5
    # the sum over all rows is minus transformers' causal-LM loss times the token count
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), reduction="sum")
    assert torch.allclose(sequence_logps(values, mask).sum(), -hf, atol=1e-5)


def test_chunked_logps_equal_full_logits_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = -100
    labels[2, 4:] = -100
    full, mask = token_logps(hidden @ weight.T, labels)
    (g_h, g_w) = torch.autograd.grad(sequence_logps(full, mask).sum(), (hidden, weight))
    for chunk in (1, 4, 100):
        part, mask2 = token_logps_chunked(hidden, weight, labels, chunk_tokens=chunk)
        assert torch.equal(mask, mask2)
        assert torch.allclose(part, full, atol=1e-5)
        (c_h, c_w) = torch.autograd.grad(sequence_logps(part, mask2).sum(), (hidden, weight))
        assert torch.allclose(c_h, g_h, atol=1e-5) and torch.allclose(c_w, g_w, atol=1e-5)


def test_sigmoid_dpo_and_stats_by_hand():
    beta = 0.1
    loss, stats = dpo_loss(PC, PR, RC, RR, beta=beta)
    # pair 0: ratios 1.0 and -0.5 -> d 1.5; pair 1: ratios -0.5 and 0.5 -> d -1.0
    expect = (-log_sigmoid(0.15) - log_sigmoid(-0.1)) / 2
    assert loss.item() == pytest.approx(expect, abs=1e-6)
    assert stats["rewards/chosen"] == pytest.approx((0.1 - 0.05) / 2)
    assert stats["rewards/rejected"] == pytest.approx((-0.05 + 0.05) / 2)
    assert stats["rewards/margins"] == pytest.approx((0.15 - 0.1) / 2)
    assert stats["rewards/accuracies"] == 0.5
    assert stats["logps/chosen"] == pytest.approx(-2.5)


def test_cdpo_ipo_and_sft_term_by_hand():
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.2)
    per_pair = [-(0.8 * log_sigmoid(x) + 0.2 * log_sigmoid(-x)) for x in (0.15, -0.1)]
    assert loss.item() == pytest.approx(sum(per_pair) / 2, abs=1e-6)

    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo", chosen_tokens=NC,
                       rejected_tokens=NR)
    # per-token log-ratio differences: 1.0/2 - (-0.5)/3 and -0.5/4 - 0.5/1; target 1/(2*0.5) = 1
    d0, d1 = 0.5 + 0.5 / 3, -0.125 - 0.5
    assert loss.item() == pytest.approx(((d0 - 1) ** 2 + (d1 - 1) ** 2) / 2, abs=1e-6)

    loss, stats = dpo_loss(PC, PR, RC, RR, beta=0.1, sft_weight=0.5, chosen_tokens=NC,
                           rejected_tokens=NR)
    nll = 5.0 / 6  # -(-1 - 4) over 2 + 4 chosen tokens
    assert stats["sft_nll"] == pytest.approx(nll)
    assert loss.item() == pytest.approx((-log_sigmoid(0.15) - log_sigmoid(-0.1)) / 2 + 0.5 * nll,
                                        abs=1e-6)
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, label_smoothing=0.6)


def test_matches_trl_dpo_trainer_on_the_same_numbers():
    pytest.importorskip("trl", minversion="1.16")
    torch.manual_seed(0)
    b, length = 3, 9
    logits = torch.randn(2 * b, length, 13)
    labels = torch.randint(0, 13, (2 * b, length))
    labels[:, :3] = -100  # the prompt
    labels[1, 7:] = -100  # padding of a shorter reply
    labels[4, 5:] = -100
    per_token, mask = token_logps(logits, labels)
    completion = (labels != -100).long()
    ref = sequence_logps(per_token, mask) + torch.randn(2 * b)
    ours_c, ours_r = split_pairs(sequence_logps(per_token, mask))
    ref_c, ref_r = split_pairs(ref)
    n_c, n_r = split_pairs(mask.sum(-1))
    for loss_type, beta, extra in (("sigmoid", 0.1, {}), ("sigmoid", 0.7, {}),
                                   ("ipo", 0.3, {"chosen_tokens": n_c, "rejected_tokens": n_r})):
        ours, stats = dpo_loss(ours_c, ours_r, ref_c, ref_r, beta=beta, loss_type=loss_type, **extra)
        theirs, metrics = trl_dpo_loss(per_token, completion, ref, beta, [loss_type], [1.0])
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-6), loss_type
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                    "logps/chosen", "logps/rejected"):
            assert stats[key] == pytest.approx(metrics[key], abs=1e-6), key
    # sigmoid + TRL's "sft" loss (weight 0.5): our sft_weight term
    ours, _ = dpo_loss(ours_c, ours_r, ref_c, ref_r, beta=0.2, sft_weight=0.5, chosen_tokens=n_c,
                       rejected_tokens=n_r)
    theirs, _ = trl_dpo_loss(per_token, completion, ref, 0.2, ["sigmoid", "sft"], [1.0, 0.5])
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


@pytest.fixture(scope="module")
def tiny_dense(tmp_path_factory):
    from data.processor import build_processor
    from train.debug_models import build_tiny_checkpoint

    processor = build_processor()
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "dense", "dense", 0, processor), processor


def test_reference_logps_of_a_lora_model_are_the_base_models(tiny_dense, tmp_path):
    from data.config import SourceConfig
    from data.encode import SampleEncoder, VisionBudget
    from data.preference import PairEncoder, collate_pairs
    from data.sources.preference import load_pairs
    from tests.helpers import preference_files as pf
    from train.config import LoraConfig
    from train.lora import apply_lora
    from train.modeling import load_model

    path, processor = tiny_dense
    pairs = load_pairs(SourceConfig(path=str(pf.ours(tmp_path)), format="messages"))
    encoder = PairEncoder(SampleEncoder(processor, VisionBudget(32 * 32 * 4, 32 * 32 * 16)))
    batch = collate_pairs([encoder.encode(p) for p in pairs], processor.tokenizer.pad_token_id)

    base = load_model(str(path)).eval()
    with torch.no_grad():
        base_logps, counts = batch_sequence_logps(base, batch)
        chunked, _ = batch_sequence_logps(base, batch, chunk_tokens=3)
    assert torch.allclose(chunked, base_logps, atol=1e-4)
    assert (counts > 0).all()

    model = apply_lora(load_model(str(path)), LoraConfig(r=4, alpha=8)).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking adapters: lora_B is zero at init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        policy, _ = batch_sequence_logps(model, batch)
    assert not torch.allclose(policy, base_logps, atol=1e-3)  # the adapters do change it
    ref = reference_logps(model, batch)
    assert torch.allclose(ref, base_logps, atol=1e-5)
    assert torch.allclose(batch_sequence_logps(model, batch)[0].detach(), policy)  # re-enabled
    with pytest.raises(ValueError, match="not a peft model"):
        reference_logps(base, batch)


def test_packed_sequence_sums_by_hand():
    values = torch.tensor([[0.5, -1.0, -2.0, -3.0, -4.0]])
    mask = torch.tensor([[True, True, False, True, True]])
    # tokens 0-2 are sequence 1, tokens 3-5 sequence 0; value t scores token t + 1
    ids = torch.tensor([[1, 1, 1, 0, 0, 0]])
    assert sequence_logps(values, mask, ids).tolist() == [-3.0 - 4.0, 0.5 - 1.0]
    from train.objectives.logprobs import sequence_counts

    assert sequence_counts(mask, ids).tolist() == [2, 2]


def test_packed_pairs_give_the_padded_batchs_log_probs(tiny_dense, tmp_path):
    from data.config import SourceConfig
    from data.encode import SampleEncoder, VisionBudget
    from data.preference import PairEncoder, collate_packed_pairs, collate_pairs
    from data.sources.preference import load_pairs
    from tests.helpers import preference_files as pf
    from train.modeling import load_model

    path, processor = tiny_dense
    pairs = load_pairs(SourceConfig(path=str(pf.ours(tmp_path)), format="messages"))
    encoder = PairEncoder(SampleEncoder(processor, VisionBudget(32 * 32 * 4, 32 * 32 * 16)))
    examples = [encoder.encode(p) for p in pairs]
    padded = collate_pairs(examples, processor.tokenizer.pad_token_id)
    packed = collate_packed_pairs(examples, processor.image_processor.merge_size)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    model = load_model(str(path)).eval()
    with torch.no_grad():
        want, want_n = batch_sequence_logps(model, padded)
        got, got_n = batch_sequence_logps(model, packed)
        chunked, _ = batch_sequence_logps(model, packed, chunk_tokens=5)
    assert torch.equal(got_n, want_n)
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert torch.allclose(chunked, want, atol=1e-4)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_pair_images_are_encoded_once_with_the_same_loss_and_gradients(tiny_dense, tmp_path,
                                                                       layout):
    """DpoStep runs the vision tower once per distinct image (train/objectives/shared_vision.py):
    the chosen and rejected rows of a pair carry the same images. Loss and every gradient (the
    vision adapters' included) equal encoding each copy; the tower sees half the rows."""
    from data.config import SourceConfig
    from data.encode import SampleEncoder, VisionBudget
    from data.preference import PairEncoder, collate_packed_pairs, collate_pairs
    from data.sources.preference import load_pairs
    from tests.helpers import preference_files as pf
    from train.config import DpoConfig, LoraConfig
    from train.lora import apply_lora
    from train.modeling import load_model
    from train.objectives.dpo_step import DpoStep

    path, processor = tiny_dense
    pairs = load_pairs(SourceConfig(path=str(pf.ours(tmp_path)), format="messages"))
    encoder = PairEncoder(SampleEncoder(processor, VisionBudget(32 * 32 * 4, 32 * 32 * 16)))
    examples = [encoder.encode(p) for p in pairs]
    batch = (collate_pairs(examples, processor.tokenizer.pad_token_id) if layout == "padded"
             else collate_packed_pairs(examples, processor.image_processor.merge_size))
    assert batch["image_grid_thw"].shape[0] >= 2

    def loss_and_grads(shared: bool):
        torch.manual_seed(0)
        model = apply_lora(load_model(str(path)),
                           LoraConfig(r=4, alpha=8, targets=["llm_attn", "vision", "merger"]))
        with torch.no_grad():  # adapters away from the identity, so the policy != reference
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
        step = DpoStep(DpoConfig(), policy=model if shared else None)

        def forward(inputs):
            return model(**inputs, use_cache=False)

        loss, _ = step.loss(forward, model, dict(batch), pairs_per_rank=len(examples))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, step.shared

    plain, plain_grads, _ = loss_and_grads(False)
    shared, shared_grads, hooks = loss_and_grads(True)
    assert hooks[0].encoded * 2 == hooks[0].requested  # each image once instead of twice
    assert torch.allclose(shared, plain, atol=1e-6)
    assert shared_grads.keys() == plain_grads.keys()
    assert any(".visual." in n and "lora_" in n for n in shared_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
