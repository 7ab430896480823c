"""DPO through the training entry point (train.objective: dpo): the first step's loss is
exactly log 2 (LoRA starts as the identity, so policy = reference), the logged rewards are
TRL's, training raises the reward accuracy, full fine-tuning uses a frozen reference, packing
works, and a killed DPO run resumes to the uninterrupted run's losses."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from data.configio import load_config
from data.tools.synthetic_pairs import write_pairs
from tests.helpers import launch
from tests.helpers.launch import QUICK_TRAIN, TRAIN_CONFIG, metrics
from train.config import Config
from train.trainer import train


@pytest.fixture(scope="module")
def pairs(corpus):
    return write_pairs(corpus["train"], corpus["train"].parent / "pairs.jsonl")


def config(tiny, pairs, out, *overrides):
    return load_config(Config, TRAIN_CONFIG, [
        f"model.path={tiny['dense']}", f"data.train={pairs}", "data.format=messages",
        f"train.output_dir={out}", *QUICK_TRAIN, "train.objective=dpo", "train.batch_size=2",
        "logging.loss_plot=false", *overrides])


def test_dpo_starts_at_log_2_and_learns_to_prefer_chosen(tiny, pairs, tmp_path):
    out = tmp_path / "dpo"
    # 8 pairs seen 8 times each: the policy should come to prefer every chosen reply.
    few = tmp_path / "few.jsonl"
    few.write_text("".join(pairs.read_text().splitlines(keepends=True)[:8]))
    train(config(tiny, few, out, "train.max_steps=16", "train.lr=2e-3", "train.batch_size=4",
                 "train.lr_schedule=constant", f"data.image_root={pairs.parent}"))
    rows = metrics(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert all(key in r for r in rows), key
    late = rows[-4:]
    assert sum(r["rewards/accuracies"] for r in late) / len(late) >= 0.75
    assert sum(r["loss"] for r in late) / len(late) < math.log(2) - 0.05
    assert (out / "final/adapter_model.safetensors").is_file()


def test_full_fine_tuning_dpo_uses_a_frozen_reference(tiny, pairs, tmp_path):
    out = tmp_path / "dpo-full"
    train(config(tiny, pairs, out, "train.max_steps=3", "lora.enabled=false",
                 "train.freeze_vision=true", "train.lr=1e-4"))
    rows = metrics(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = its frozen copy
    # Step 1 warms up from lr 0; after step 2's update the policy moved, the reference did not.
    assert rows[2]["rewards/margins"] != 0.0


def test_packed_dpo_starts_at_log_2(tiny, pairs, tmp_path):
    out = tmp_path / "dpo-packed"
    train(config(tiny, pairs, out, "train.max_steps=2", "train.batch_size=1",
                 "data.packing=true", "data.pack_tokens=4096"))
    rows = metrics(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_killed_dpo_run_resumes_to_the_same_losses(tiny, pairs, tmp_path):
    common = ("train.objective=dpo", "data.format=messages", "train.batch_size=2",
              "train.max_steps=4", "train.save_every=1", "train.lr=5e-3")
    full, part = tmp_path / "full", tmp_path / "part"
    launch.run_train(tiny["dense"], full, *common, data=pairs)
    killed = launch.run_train(tiny["dense"], part, *common, data=pairs,
                              faults=("--kill-at-step", "3"), check=False)
    assert killed.returncode != 0
    launch.run_train(tiny["dense"], part, *common, "train.resume=auto", data=pairs)
    assert launch.losses(part) == launch.losses(full)
    shutil.rmtree(part)


# --- GRPO through the same loop ---------------------------------------------------------------

def grpo_config(tiny, corpus, out, *overrides):
    return load_config(Config, TRAIN_CONFIG, [
        f"model.path={tiny['dense']}", f"data.train={corpus['train']}", f"train.output_dir={out}",
        *QUICK_TRAIN, "train.objective=grpo", "train.batch_size=2", "grpo.group_size=3",
        "grpo.max_new_tokens=6", "grpo.rewards={exact_match: 1.0, think_format: 0.0}",
        "logging.loss_plot=false", *overrides])


def test_grpo_trains_through_the_loop_and_records_every_rollout(tiny, corpus, tmp_path):
    out = tmp_path / "grpo"
    train(grpo_config(tiny, corpus, out, "train.max_steps=2", "train.grad_accum=2"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/mean", "reward/std_in_group", "kl", "clip_ratio", "completion_length",
                "reward/exact_match"):
        assert all(key in r for r in rows), key
    assert all(r["tokens_per_s"] > 0 for r in rows)  # prompts + sampled completions counted
    records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 2 * 3  # steps x micro-batches x prompts x group
    assert {r["step"] for r in records} == {1, 2}
    assert all(set(r) >= {"prompt_id", "completion", "rewards", "reward", "advantage", "errors"}
               for r in records)
    assert (out / "final/adapter_model.safetensors").is_file()


def test_killed_grpo_run_resumes_to_the_same_losses_and_rollouts(tiny, corpus, tmp_path):
    """Rollouts sample from torch's RNG, which checkpoints save: a resumed run draws the same."""
    common = ("train.objective=grpo", "train.batch_size=2", "grpo.group_size=2",
              "grpo.max_new_tokens=4", "grpo.rewards={tests.test_grpo_step:length_reward: 1.0}",
              "train.max_steps=3", "train.save_every=1", "train.lr=1e-2")
    full, part = tmp_path / "full", tmp_path / "part"
    launch.run_train(tiny["dense"], full, *common, data=corpus["train"])
    killed = launch.run_train(tiny["dense"], part, *common, data=corpus["train"],
                              faults=("--kill-at-step", "3"), check=False)
    assert killed.returncode != 0
    launch.run_train(tiny["dense"], part, *common, "train.resume=auto", data=corpus["train"])
    assert launch.losses(part) == launch.losses(full)
    assert any(loss != 0.0 for loss in launch.losses(full).values())  # rewards differed

    def completions(out):
        return {(r["step"], r["prompt_id"], r["completion_index"]): r["completion"]
                for r in map(json.loads, (out / "rollouts.jsonl").read_text().splitlines())}
    assert completions(part) == completions(full)


def test_precomputed_reference_equals_the_adapters_off_reference(tiny, pairs, tmp_path):
    """dpo.precompute_reference: one pass before the first step writes every pair's reference
    log-probs; the steps then give the losses of the per-step adapters-off reference."""
    base = ("train.max_steps=3", "train.lr=5e-3", f"data.image_root={pairs.parent}")
    train(config(tiny, pairs, tmp_path / "step", *base))
    train(config(tiny, pairs, tmp_path / "table", *base, "dpo.precompute_reference=true"))
    saved = json.loads((tmp_path / "table/reference_logps.json").read_text())
    n_pairs = len(pairs.read_text().splitlines())
    assert saved["pairs"] == n_pairs and len(saved["values"]) == n_pairs
    step, table = metrics(tmp_path / "step"), metrics(tmp_path / "table")
    for a, b in zip(step, table):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)
    assert abs(table[-1]["loss"] - table[0]["loss"]) > 1e-3  # it trained


def test_precomputed_reference_is_read_back_and_recomputed_for_another_corpus(tmp_path, capsys,
                                                                             monkeypatch):
    import torch

    from train.distributed import DistInfo
    from train.objectives import dpo_reference

    class Corpus:
        def __init__(self, ids):
            self.ids = ids

        def __len__(self):
            return len(self.ids)

        def sample_id(self, i):
            return self.ids[i]

    class Dataset:
        def __init__(self, ids):
            self.corpus = Corpus(ids)

        def __len__(self):
            return len(self.corpus)

    path, calls = tmp_path / dpo_reference.FILE, []

    def compute(dataset, *args):
        calls.append(len(dataset))
        return {i: (-1.0 - i, -2.0 - i) for i in range(len(dataset))}

    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    monkeypatch.setattr(dpo_reference, "compute", compute)  # the pass itself: tested above
    first = dpo_reference.load_or_compute(path, Dataset(["a", "b"]), None, None, dist, 2, True)
    again = dpo_reference.load_or_compute(path, Dataset(["a", "b"]), None, None, dist, 2, True)
    other = dpo_reference.load_or_compute(path, Dataset(["a", "c", "d"]), None, None, dist, 2, True)
    assert calls == [2, 3]  # the resumed run read the table; another corpus recomputed it
    assert again.values == first.values and len(other) == 3
    assert again.logps(torch.tensor([1, 0])).tolist() == [-2.0, -1.0, -3.0, -2.0]
    assert "belongs to another corpus" in capsys.readouterr().out


# Dense ZeRO-3 takes the same path; the MoE with AutoEP (which needs trainable experts: full
# fine-tuning, 4 of 8 experts per rank) is the case that had no way to run DPO before.
@pytest.mark.parametrize("model, extra", [
    ("moe", ("distributed.expert_parallel=2", "moe.aux_loss_coef=0.01", "moe.log_expert_load=false",
             "dpo.precompute_reference=true")),
    ("dense", ()),
])
def test_full_fine_tuning_dpo_under_zero3(tiny, pairs, tmp_path, model, extra):
    """2 processes under ZeRO-3 log the losses of one process with a frozen copy: the MoE with
    expert parallelism and the reference log-probs precomputed (no copy), the dense model with
    the frozen copy partitioned like the policy (train/objectives/reference.py)."""
    common = ("train.objective=dpo", "data.format=messages", f"data.image_root={pairs.parent}",
              "train.batch_size=2", "train.max_steps=3", "train.lr=1e-4", "lora.enabled=false",
              "train.freeze_vision=true", "logging.loss_plot=false",
              *(e for e in extra if e.startswith("moe.")))
    one, z3 = tmp_path / "one", tmp_path / "z3"
    launch.train_here(tiny[model], one, *common, "train.grad_accum=2", data=pairs)
    launch.run_train(tiny[model], z3, *common, "distributed.deepspeed=zero3", *extra,
                     data=pairs, nproc=2)
    precomputed = "dpo.precompute_reference=true" in extra
    assert (z3 / "reference_logps.json").is_file() == precomputed
    assert not (one / "reference_logps.json").exists()
    a, b = launch.losses(one), launch.losses(z3)
    assert a.keys() == b.keys() == {1, 2, 3}
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-4, (s, a[s], b[s])
    assert a[1] == pytest.approx(math.log(2), abs=1e-6) and abs(a[3] - a[1]) > 1e-6
