"""GRPO pieces against numbers worked out by hand: group advantages (equal rewards -> exactly 0),
the clipped loss in GRPO / Dr. GRPO / DAPO / GSPO styles, the k3 KL term, clip fractions; and
rewards: the eval scorers' own scores, failures recorded (never raised), user functions by path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from data.samples import Sample
from train.objectives.grpo import group_advantages, group_stats, k3_kl, policy_loss


def test_group_advantages_by_hand_and_equal_rewards_give_zero():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    std = math.sqrt((3 * 0.25 ** 2 + 0.75 ** 2) / 3)  # unbiased: 0.5
    expect = [0.25 / (std + 1e-4), -0.75 / (std + 1e-4)] + [0.25 / (std + 1e-4)] * 2 + [0.0] * 4
    assert adv.tolist() == pytest.approx(expect, abs=1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))  # exactly zero, not NaN
    assert group_advantages(rewards, 4, scale="none").tolist() == [0.25, -0.75, 0.25, 0.25, 0, 0, 0, 0]
    assert not group_advantages(torch.zeros(6), 3).isnan().any()
    assert group_stats(rewards, 4) == pytest.approx(
        {"reward": 11 / 8, "reward_std": std / 2, "zero_std_fraction": 0.5})
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, 1)
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(rewards, 3)


# Two completions of 3 and 2 tokens; sampled by a policy with log-probs 0 (old), so the ratio of
# each token is exp(logp): row 0 [1.5, 1.0, 0.5], row 1 [0.7, 1.1, (padding)].
RATIOS = torch.tensor([[1.5, 1.0, 0.5], [0.7, 1.1, 1.0]])
LOGPS, OLD = RATIOS.log(), torch.zeros(2, 3)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
ADV = torch.tensor([1.0, -1.0])
# Token losses -min(rA, clip(r) A) with eps 0.2: row 0 (A=+1): -1.2 (clipped high), -1.0, -0.5;
# row 1 (A=-1): 0.8 (clipped low), 1.1.
ROW0, ROW1 = [-1.2, -1.0, -0.5], [0.8, 1.1]


def test_grpo_style_mean_per_sequence_then_over_sequences():
    loss, stats = policy_loss(LOGPS, OLD, ADV, MASK, style="grpo")
    assert loss.item() == pytest.approx((sum(ROW0) / 3 + sum(ROW1) / 2) / 2, abs=1e-6)
    assert stats["clip_ratio/high"] == pytest.approx(1 / 5)
    assert stats["clip_ratio/low"] == pytest.approx(1 / 5)
    assert stats["clip_ratio"] == pytest.approx(2 / 5)
    assert stats["completion_length"] == 2.5
    assert stats["ratio"] == pytest.approx((1.5 + 1.0 + 0.5 + 0.7 + 1.1) / 5)


def test_dr_grpo_constant_normaliser_and_dapo_token_level_clip_higher():
    loss, _ = policy_loss(LOGPS, OLD, ADV, MASK, style="dr_grpo", max_tokens=4)
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / (2 * 4), abs=1e-6)
    loss, _ = policy_loss(LOGPS, OLD, ADV, MASK, style="dr_grpo")  # default: T = 3
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / (2 * 3), abs=1e-6)
    # DAPO: eps_high 0.28, so token 0 of row 0 clips at 1.28; one sum over the batch's 5 tokens
    loss, stats = policy_loss(LOGPS, OLD, ADV, MASK, style="dapo")
    assert loss.item() == pytest.approx((-1.28 - 1.0 - 0.5 + 0.8 + 1.1) / 5, abs=1e-6)
    assert stats["clip_ratio/high"] == pytest.approx(1 / 5)


def test_gspo_sequence_level_ratio():
    s0 = math.exp((math.log(1.5) + 0 + math.log(0.5)) / 3)  # geometric mean of row 0's ratios
    s1 = math.exp((math.log(0.7) + math.log(1.1)) / 2)
    loss, stats = policy_loss(LOGPS, OLD, ADV, MASK, style="gspo", eps_low=0.2, eps_high=0.2)
    # s0 = 0.909 and s1 = 0.877 both inside [0.8, 1.2]: no clipping
    assert loss.item() == pytest.approx((-s0 + s1) / 2, abs=1e-6)
    assert stats["clip_ratio"] == 0
    # GSPO's own eps (3e-4 / 4e-4): row 1 (A < 0, s1 < 1 - 3e-4) is clipped at 0.9997
    loss, stats = policy_loss(LOGPS, OLD, ADV, MASK, style="gspo")
    assert loss.item() == pytest.approx((-s0 + (1 - 3e-4)) / 2, abs=1e-6)
    assert stats["clip_ratio/low"] == 0.5 and stats["clip_ratio/high"] == 0
    # the gradient of row 0 flows through the mean token log-ratio: d(-s0)/d logp_t = -s0 / 3
    logps = LOGPS.clone().requires_grad_(True)
    policy_loss(logps, OLD, ADV, MASK, style="gspo")[0].backward()
    assert logps.grad[0].tolist() == pytest.approx([-s0 / 3 / 2] * 3, abs=1e-6)
    assert logps.grad[1].tolist() == [0.0, 0.0, 0.0]  # clipped: no gradient


def test_k3_kl_term():
    ref = torch.zeros(2, 3)
    kl = [[1 / r + math.log(r) - 1 for r in row] for row in RATIOS.tolist()]  # exp(-x) + x - 1
    assert torch.allclose(k3_kl(LOGPS, ref), torch.tensor(kl), atol=1e-6)
    loss, stats = policy_loss(LOGPS, OLD, ADV, MASK, style="grpo", kl_coef=0.1, ref_logps=ref)
    row0 = sum(l + 0.1 * k for l, k in zip(ROW0, kl[0])) / 3
    row1 = sum(l + 0.1 * k for l, k in zip(ROW1, kl[1][:2])) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert stats["kl"] == pytest.approx((sum(kl[0]) + sum(kl[1][:2])) / 5, abs=1e-6)
    assert k3_kl(ref, ref).abs().max() == 0  # same policy: no divergence
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(LOGPS, OLD, ADV, MASK, kl_coef=0.1)



def trl_grpo_loss(logps, old, ref, adv, mask, loss_type, level, beta, eps_low, eps_high,
                  max_len):
    """TRL 1.16's GRPOTrainer._compute_loss on given per-token log-probs (the model stub returns
    them): its own arithmetic and clip metrics, none of ours."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl.trainer.grpo_trainer import GRPOTrainer

    ident = lambda x, **kw: x
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **kw: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=beta, args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len,
        accelerator=SimpleNamespace(num_processes=1, gather=ident, reduce=ident),
        _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)))
    trainer.args.steps_per_generation = 1
    n = logps.shape[0]
    inputs = {"prompt_ids": torch.ones(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1),
              "completion_ids": torch.ones_like(mask, dtype=torch.long),
              "completion_mask": mask.float(), "advantages": adv, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": mask.sum().float()}
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("style, trl_type, level", [("grpo", "grpo", "token"),
                                                    ("dr_grpo", "dr_grpo", "token"),
                                                    ("dapo", "dapo", "token"),
                                                    ("gspo", "grpo", "sequence")])
@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_matches_trl_grpo_trainer_on_the_same_numbers(style, trl_type, level, kl_coef):
    pytest.importorskip("trl", minversion="1.16")
    from train.objectives.grpo import STYLES

    torch.manual_seed(1)
    n, t = 6, 7
    old = -torch.rand(n, t) * 3
    ref = old + 0.2 * torch.randn(n, t)
    mask = torch.rand(n, t) > 0.3
    mask[:, 0] = True
    adv = group_advantages(torch.randint(0, 3, (n,)).float(), 3, scale=STYLES[style]["scale"])
    eps_low, eps_high = (0.1, 0.15) if style == "gspo" else (STYLES[style]["eps_low"],
                                                             STYLES[style]["eps_high"])
    ours_logps = (old + 0.3 * torch.randn(n, t)).requires_grad_(True)
    trl_logps = ours_logps.detach().clone().requires_grad_(True)
    ours, stats = policy_loss(ours_logps, old, adv, mask, style=style, eps_low=eps_low,
                              eps_high=eps_high, kl_coef=kl_coef, ref_logps=ref, max_tokens=t)
    theirs, metrics = trl_grpo_loss(trl_logps, old, ref, adv, mask, trl_type, level, kl_coef,
                                    eps_low, eps_high, t)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    ours.backward()
    theirs.backward()
    assert torch.allclose(ours_logps.grad, trl_logps.grad, atol=1e-6)
    if kl_coef:
        assert stats["kl"] == pytest.approx(metrics["kl"], abs=1e-6)
    # clip fractions: of completion tokens, or (GSPO) of completions
    assert stats["clip_ratio/low"] == pytest.approx(metrics["clip_ratio/low_mean"], abs=1e-6)
    assert stats["clip_ratio/high"] == pytest.approx(metrics["clip_ratio/high_mean"], abs=1e-6)
    assert stats["clip_ratio"] == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    assert stats["clip_ratio"] > 0  # the numbers do reach the clip


# --- rewards -----------------------------------------------------------------------------------

def sample(reference: str, **meta) -> Sample:
    return Sample(id="s", messages=[{"role": "user", "content": [{"type": "text", "text": "q"}]},
                                    {"role": "assistant", "content": [{"type": "text", "text": reference}]}],
                  meta=meta)


GROUNDING = sample(json.dumps([{"bbox_2d": [100, 100, 300, 300], "label": "square"}]), task="grounding")
MATHVISTA = sample("12", question="How many?", question_type="free_form", answer_type="integer",
                   choices=None, precision=None, unit=None, answer="12", metadata={})
MMMU = sample("B", question_type="multiple-choice", options=["a cat", "a dog"], answers=["B"])
DOCVQA = sample("Hello World", answers=["Hello World", "hello"])

CASES = [  # (reward name, eval task, sample, reply, the score eval gives it)
    ("synthetic_grounding", "synthetic_grounding", GROUNDING, '[{"bbox_2d": [110, 100, 300, 290]}]', 1.0),
    ("synthetic_grounding", "synthetic_grounding", GROUNDING, '[{"bbox_2d": [200, 200, 400, 400]}]', 0.0),
    ("mathvista", "mathvista_testmini", MATHVISTA, "<think>3 rows of 4</think>The answer is 12.", 1.0),
    ("mathvista", "mathvista_testmini", MATHVISTA, "The answer is 11.", 0.0),
    ("mathvista", "mathvista_testmini", MATHVISTA, "<think>3 rows of 4 is 12", 0.0),  # never closed
    ("mmmu", "mmmu_val", MMMU, "<think>it barks</think>B", 1.0),
    ("mmmu", "mmmu_val", MMMU, "The answer is (A).", 0.0),
    ("docvqa_anls", "docvqa_val", DOCVQA, "hello world", 1.0),
    ("docvqa_anls", "docvqa_val", DOCVQA, "hello wrld", 1 - 1 / 11),
]


@pytest.mark.parametrize("name, task_name, sample_, reply, expected", CASES)
def test_task_rewards_are_the_eval_scorers_scores(name, task_name, sample_, reply, expected):
    from eval.metrics import strip_thinking
    from eval.runner import score_record
    from eval.tasks import get_task
    from train.objectives.rewards import RewardSet

    outcome = RewardSet({name: 1.0}).score(reply, sample_)
    assert not outcome.errors
    assert outcome.total == pytest.approx(expected, abs=1e-6)
    # the eval harness on the same reply and reference: the runner's record, and the task itself
    record = {"id": "s", "prediction": reply}
    if "<think>" in reply and "</think>" not in reply:
        record["thinking_truncated"] = True
    assert outcome.parts[name] == score_record(get_task(task_name), sample_, record, None)["score"]
    if "thinking_truncated" not in record:
        assert outcome.parts[name] == get_task(task_name).score(strip_thinking(reply), sample_)[0]


def test_grounding_iou_anls_and_think_format_by_hand():
    from train.objectives.rewards import resolve

    iou_reward = resolve("grounding_iou")
    # [100,100,300,300] vs [200,200,400,400]: intersection 100^2, union 2 * 200^2 - 100^2
    assert iou_reward('[{"bbox_2d": [200, 200, 400, 400]}]', GROUNDING) == pytest.approx(1 / 7)
    assert iou_reward("<think>left</think>[100, 100, 300, 300]", GROUNDING) == 1.0
    assert iou_reward('[{"bbox_2d": [0, 0, 1200, 50]}]', GROUNDING) == 0.0  # off Qwen's scale
    assert iou_reward("no box", GROUNDING) == 0.0
    pixel = sample("a box", boxes=[[20, 10, 60, 30]], image_size=[200, 100])  # refcoco's meta
    assert iou_reward('{"bbox_2d": [100, 100, 300, 300]}', pixel) == pytest.approx(1.0)
    assert resolve("anls")("hello wrld", DOCVQA) == pytest.approx(1 - 1 / 11)
    assert resolve("exact_match")("<think>x</think> Hello world.", DOCVQA) == 1.0

    fmt, opened = resolve("think_format"), resolve("think_format", opens_thinking=True)
    assert fmt("<think>count</think>12", MATHVISTA) == 1.0
    assert fmt("<think>count</think>  ", MATHVISTA) == 0.0  # no answer
    assert fmt("count</think>12", MATHVISTA) == 0.0 and opened("count</think>12", MATHVISTA) == 1.0
    assert fmt("12", MATHVISTA) == 0.0
    assert fmt("<think>a</think>1<think>b</think>2", MATHVISTA) == 0.0

    js = resolve("json_format")
    assert js('[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]', GROUNDING) == 1.0
    assert js('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```', GROUNDING) == 1.0
    assert js("<think>where</think>[1, 2, 3, 4]", GROUNDING) == 1.0
    # the box still parses for the IoU reward, but text trails it: no format credit
    assert js('[{"bbox_2d": [100, 100, 300, 300]}]29]21lelele', GROUNDING) == 0.0
    assert iou_reward('[{"bbox_2d": [100, 100, 300, 300]}]29]21lelele', GROUNDING) == 1.0


def half(completion, sample_):
    return 0.5


def boom(completion, sample_):
    raise RuntimeError("scorer crashed")


def nothing(completion, sample_):
    return None


def test_failing_rewards_fail_the_completion_never_the_run():
    from train.objectives.rewards import RewardSet, resolve

    rewards = RewardSet({"tests.test_grpo:half": 2.0, "tests.test_grpo:boom": 1.0,
                         "tests.test_grpo:nothing": 1.0, "grounding_iou": 1.0})
    outcome = rewards.score("[100, 100, 300, 300]", GROUNDING)
    assert outcome.parts == {"tests.test_grpo:half": 0.5, "tests.test_grpo:boom": 0.0,
                             "tests.test_grpo:nothing": 0.0, "grounding_iou": 1.0}
    assert outcome.total == 2.0
    assert outcome.errors["tests.test_grpo:boom"] == "RuntimeError: scorer crashed"
    assert outcome.errors["tests.test_grpo:nothing"].startswith("TypeError")
    # a sample without any reference box is a failure of that completion's reward, recorded
    outcome = rewards.score("[1, 2, 3, 4]", sample("no box here"))
    assert "no reference box" in outcome.errors["grounding_iou"]
    with pytest.raises(ValueError, match="unknown reward"):
        resolve("iou")
    with pytest.raises(ValueError, match="cannot import"):
        resolve("tests.test_grpo:missing")
    with pytest.raises(KeyError, match="unknown eval task"):
        resolve("task:nope")
