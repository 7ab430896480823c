"""GRPO in the training loop's terms, on the tiny model: prompts read from an SFT corpus
(lengths, budgets, picklable examples, the collator's keys), rollouts (B*G rows, labels on
exactly the completion tokens, stop tokens kept, same seed -> same completions), and the step's
loss: equal rewards give zero advantages and a zero gradient, a reward that raises fails that
completion only, different rewards give a gradient, the KL to the adapters-off reference, and a
few updates raise a simple reward."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from data.encode import IGNORE_INDEX

HERE = "tests.test_grpo_step"


# --- reward functions the tests name by import path -------------------------------------------

def constant_reward(completion: str, sample) -> float:
    return 0.5


def raising_reward(completion: str, sample) -> float:
    raise RuntimeError("scorer broke")


def length_reward(completion: str, sample) -> float:
    return len(completion) / 100.0


def first_char_reward(completion: str, sample) -> float:
    """1 when the completion starts with an ASCII letter (half of a random model's replies)."""
    return float(bool(completion) and completion[0].isascii() and completion[0].isalpha())


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data.processor import build_processor
    from data.tools.synthetic import generate
    from train.debug_models import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("grpo")
    processor = build_processor()
    path = build_tiny_checkpoint(root / "dense", "dense", 0, processor)
    data = generate(root / "data", train_per_task=2, eval_per_task=1, seed=0)
    return path, processor, data["train"]


def prompt_corpus(setup, max_new_tokens=8, **data):
    from data.config import DataConfig
    from data.prompts import load_prompt_corpus
    from data.samples import BadSampleLog

    _, processor, train = setup
    bad = BadSampleLog("skip")
    corpus = load_prompt_corpus(DataConfig(train=str(train), **data), processor, bad, plan=True,
                                max_new_tokens=max_new_tokens)
    return corpus, bad


def prompt_batch(setup, indices=(0, 1), max_new_tokens=8):
    from data.prompts import PromptCollator
    from train.data import EncodedDataset

    corpus, _ = prompt_corpus(setup, max_new_tokens)
    dataset = EncodedDataset(corpus)
    return PromptCollator(setup[1].tokenizer.pad_token_id)([dataset[i] for i in indices])


def lora_model(setup):
    from train.config import LoraConfig
    from train.lora import apply_lora
    from train.modeling import load_model

    model = apply_lora(load_model(str(setup[0])), LoraConfig(r=4, alpha=8))
    model.train()
    return model


def forward_of(model):
    return lambda inputs: model(**inputs, use_cache=False)


def step_with(setup, **cfg):
    from train.objectives.grpo_step import GrpoConfig, GrpoStep

    cfg = {"group_size": 3, "max_new_tokens": 8, **cfg}
    return GrpoStep(GrpoConfig(**cfg), setup[1])


# --- prompts -----------------------------------------------------------------------------------

def test_prompt_corpus_lengths_encodings_and_budget(setup):
    from data.prompts import PROMPT_SAMPLE, PromptCollator, prompts_in
    from train.data import EncodedDataset

    corpus, bad = prompt_corpus(setup)
    assert len(corpus) == 6 and not bad.records
    dataset = EncodedDataset(corpus)
    for i in range(len(corpus)):
        example = corpus.encode(i)
        assert len(example["input_ids"]) == corpus.lengths[i]  # planned = encoded prompt tokens
        assert example[PROMPT_SAMPLE] is corpus.samples[i]
    # the generation input ends with the assistant header; the reply is not in it
    tok = setup[1].tokenizer
    text = tok.decode(corpus.encode(0)["input_ids"])
    assert text.endswith("<|im_start|>assistant\n")
    assert corpus.samples[0].answer() not in text.split("<|im_start|>assistant")[-1]

    examples = [dataset[i] for i in (0, 1, 2)]
    again = pickle.loads(pickle.dumps(examples))  # DataLoader workers pickle them
    assert again[0][PROMPT_SAMPLE].id == corpus.samples[0].id
    batch = PromptCollator(tok.pad_token_id)(examples)
    assert set(batch) == {"prompts", "skipped", "repaired", "samples"}
    assert prompts_in(batch) == 3
    assert batch["samples"][0]["id"] == corpus.samples[0].id
    assert batch["samples"][0]["tokens"] == corpus.lengths[0]
    moved = batch["prompts"].to("cpu")
    assert moved.ids == batch["prompts"].ids and len(moved) == 3
    with pytest.raises(ValueError, match="packing"):
        PromptCollator(tok.pad_token_id, packing=True)

    # budget: the prompt plus max_new_tokens must fit max_seq_len
    longest = max(corpus.lengths)
    tight, bad = prompt_corpus(setup, max_new_tokens=8, max_seq_len=longest + 9,
                               over_budget="drop")
    assert len(tight) == len(corpus)
    tight, bad = prompt_corpus(setup, max_new_tokens=64, max_seq_len=longest + 9,
                               over_budget="drop")
    assert len(tight) == 0 and len(bad.records) == 6
    assert "max_new_tokens 64" in bad.records[0].reason


# --- rollouts ------------------------------------------------------------------------------

def test_completions_stop_at_im_end_or_eos_and_keep_it():
    from train.objectives.rollout import completions_of

    new = torch.tensor([[5, 6, 9, 0, 0], [5, 7, 8, 3, 4], [1, 0, 0, 0, 0]])
    ids, truncated = completions_of(new, [9, 1])
    assert ids == [[5, 6, 9], [5, 7, 8, 3, 4], [1]]
    assert truncated == [False, True, False]


def test_training_rows_label_exactly_the_completion(setup):
    from train.objectives.rollout import training_rows

    batch = prompt_batch(setup)
    prompts = batch["prompts"].examples
    completions = [[11, 12, 13], [14], [15, 16], [17, 18, 19, 20], [21], [22, 23]]
    rows = training_rows(prompts, completions, 3, setup[1].tokenizer.pad_token_id)
    assert rows["input_ids"].shape[0] == 6
    assert rows["image_grid_thw"].shape[0] == 6  # each row carries its prompt's image
    assert torch.equal(rows["pixel_values"][:len(prompts[0]["pixel_values"])],
                       prompts[0]["pixel_values"])
    for i, completion in enumerate(completions):
        prompt = prompts[i // 3]["input_ids"]
        n = len(prompt)
        assert torch.equal(rows["input_ids"][i, :n], prompt)
        labelled = rows["labels"][i] != IGNORE_INDEX
        assert labelled.nonzero().flatten().tolist() == list(range(n, n + len(completion)))
        assert rows["labels"][i, labelled].tolist() == completion
        assert int(rows["attention_mask"][i].sum()) == n + len(completion)
        assert rows["mm_token_type_ids"][i, n:].eq(0).all()


def test_rollouts_give_b_times_g_rows_and_same_seed_same_completions(setup):
    from train.objectives.grpo_step import GrpoConfig
    from train.objectives.rollout import generate_rollouts, suppressed_token_ids

    batch = prompt_batch(setup)
    model = lora_model(setup)
    cfg = GrpoConfig(group_size=3, max_new_tokens=8)
    tok = setup[1].tokenizer
    torch.manual_seed(7)
    first = generate_rollouts(model, batch["prompts"].examples, cfg, tok)
    assert model.training and model.base_model.model.lm_head.training is True  # mode restored
    torch.manual_seed(7)
    second = generate_rollouts(model, batch["prompts"].examples, cfg, tok)
    torch.manual_seed(8)
    other = generate_rollouts(model, batch["prompts"].examples, cfg, tok)
    assert len(first) == 6 and first.rows["input_ids"].shape[0] == 6
    assert first.completion_ids == second.completion_ids and first.texts == second.texts
    assert first.completion_ids != other.completion_ids
    assert len(set(map(tuple, first.completion_ids))) > 1  # sampled, not greedy
    suppressed = set(suppressed_token_ids(tok))
    assert len(suppressed) == 4
    for i, ids in enumerate(first.completion_ids + other.completion_ids):
        assert not suppressed & set(ids)  # no visual placeholder is ever sampled
    for i, ids in enumerate(first.completion_ids):
        labels = first.rows["labels"][i]
        assert labels[labels != IGNORE_INDEX].tolist() == ids
        assert 1 <= len(ids) <= 8
        assert first.truncated[i] == (len(ids) == 8 and ids[-1] not in (
            tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id))


# --- the step's loss -----------------------------------------------------------------------

def grads(model):
    return [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]


def test_equal_rewards_give_zero_advantages_and_zero_gradient(setup, tmp_path):
    from train.objectives.grpo_step import append_records

    batch = prompt_batch(setup)
    model = lora_model(setup)
    step = step_with(setup, rewards={f"{HERE}:constant_reward": 1.0})
    torch.manual_seed(0)
    loss, stats = step.loss(forward_of(model), model, batch, 2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert all(g.abs().max() == 0 for g in grads(model))
    records = step.take_records()
    assert len(records) == 6 and step.take_records() == []
    assert all(r["advantage"] == 0.0 and r["reward"] == 0.5 for r in records)
    out = tmp_path / "rollouts.jsonl"
    append_records(out, records, step=3, rank=0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6 and lines[0]["step"] == 3 and lines[0]["prompt_id"] == records[0]["prompt_id"]
    assert stats["reward/mean"] == pytest.approx(0.5)
    assert stats["reward/std_in_group"] == 0.0 and stats["reward/zero_std_fraction"] == 1.0
    assert stats["clip_ratio"] == 0.0 and stats["kl"] == 0.0
    assert {"completion_length", "reward/tests.test_grpo_step:constant_reward",
            "reward/failed_fraction", "rollout/samples_per_s"} <= set(stats)


def test_a_raising_reward_fails_its_completions_and_the_step_goes_on(setup):
    batch = prompt_batch(setup)
    model = lora_model(setup)
    step = step_with(setup, rewards={f"{HERE}:raising_reward": 1.0,
                                     f"{HERE}:length_reward": 1.0})
    torch.manual_seed(0)
    loss, stats = step.loss(forward_of(model), model, batch, 2.0)
    assert math.isfinite(loss.item())
    assert stats["reward/failed_fraction"] == 1.0
    assert stats[f"reward/{HERE}:raising_reward"] == 0.0
    for r in step.take_records():
        assert r["rewards"][f"{HERE}:raising_reward"] == 0.0
        assert r["errors"] == {f"{HERE}:raising_reward": "RuntimeError: scorer broke"}
        assert r["reward"] == pytest.approx(len(r["completion"]) / 100.0)
        assert set(r) >= {"prompt_id", "completion", "rewards", "reward", "advantage"}


def test_different_rewards_give_a_gradient_scaled_by_the_prompt_share(setup):
    batch = prompt_batch(setup)
    model = lora_model(setup)
    step = step_with(setup, rewards={f"{HERE}:length_reward": 1.0})
    torch.manual_seed(0)
    loss, stats = step.loss(forward_of(model), model, batch, 2.0)
    assert stats["reward/std_in_group"] > 0
    records = step.take_records()
    assert any(r["advantage"] != 0 for r in records)
    loss.backward()
    assert any(g.abs().max() > 0 for g in grads(model))
    # units_per_rank: 2 prompts of 4 -> half the weight of the micro-batch's own mean
    torch.manual_seed(0)
    half, _ = step.loss(forward_of(model), model, batch, 4.0)
    assert half.item() == pytest.approx(loss.item() / 2, abs=1e-6)


@pytest.mark.parametrize("style", ["dr_grpo", "dapo", "gspo"])
def test_every_style_runs(setup, style):
    batch = prompt_batch(setup)
    model = lora_model(setup)
    step = step_with(setup, style=style, rewards={f"{HERE}:length_reward": 1.0})
    torch.manual_seed(0)
    loss, _ = step.loss(forward_of(model), model, batch, 2.0)
    loss.backward()
    assert math.isfinite(loss.item()) and any(g.abs().max() > 0 for g in grads(model))


def test_kl_to_the_adapters_off_reference(setup):
    batch = prompt_batch(setup)
    model = lora_model(setup)
    step = step_with(setup, kl_coef=0.1, rewards={f"{HERE}:constant_reward": 1.0})
    torch.manual_seed(0)
    _, stats = step.loss(forward_of(model), model, batch, 2.0)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    torch.manual_seed(0)
    loss, stats = step.loss(forward_of(model), model, batch, 2.0)
    assert stats["kl"] > 0 and loss.item() > 0  # advantages are 0: the loss is the KL term
    loss.backward()
    assert any(g.abs().max() > 0 for g in grads(model))


def test_a_few_updates_raise_the_reward(setup):
    """GRPO on 2 prompts with a reward for replies that start with an ASCII letter."""
    batch = prompt_batch(setup, max_new_tokens=2)
    model = lora_model(setup)
    step = step_with(setup, group_size=8, max_new_tokens=2,
                     rewards={f"{HERE}:first_char_reward": 1.0})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    torch.manual_seed(0)
    means = []
    for _ in range(STEPS):
        loss, stats = step.loss(forward_of(model), model, batch, 2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        means.append(stats["reward/mean"])
    k = 4  # seed 0 on CPU goes from ~0.1 to ~0.8; other seeds gain 0.17-0.4 in 20 steps
    assert sum(means[-k:]) / k > sum(means[:k]) / k + 0.15, means


STEPS = 20


def test_full_fine_tuning_kl_uses_a_frozen_reference_and_refuses_none(setup):
    from train.modeling import load_model
    from train.objectives.grpo_step import GrpoConfig, GrpoStep

    batch = prompt_batch(setup)
    policy, reference = load_model(str(setup[0])), load_model(str(setup[0])).eval()
    cfg = GrpoConfig(group_size=3, max_new_tokens=8, kl_coef=0.1,
                     rewards={f"{HERE}:length_reward": 1.0})
    step = GrpoStep(cfg, setup[1], reference=reference)
    torch.manual_seed(0)
    loss, stats = step.loss(forward_of(policy), policy, batch, 2.0)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6) and math.isfinite(loss.item())
    with pytest.raises(ValueError, match="not a peft model"):
        GrpoStep(cfg, setup[1]).loss(forward_of(policy), policy, batch, 2.0)


def test_config_is_checked():
    from data.processor import build_processor
    from train.objectives.grpo_step import GrpoConfig, GrpoStep

    processor = build_processor()
    for bad, match in (({"style": "ppo"}, "style"), ({"group_size": 1}, "group_size"),
                       ({"temperature": 0.0}, "temperature"), ({"kl_coef": -1.0}, "kl_coef"),
                       ({"rewards": {"no_such_reward": 1.0}}, "unknown reward")):
        with pytest.raises(ValueError, match=match):
            GrpoStep(GrpoConfig(**bad), processor)
