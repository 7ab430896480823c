"""eval.preset (Qwen's published settings), the HF presence penalty against vLLM's definition
worked by hand, and samples_per_item (mean and spread over seeds)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest
import torch

from data.configio import load_config
from eval.config import EvalConfig, GenerationConfig
from eval.sampling import PresencePenalty, hf_generate_kwargs, presence_penalty_reference


def config(*overrides: str) -> EvalConfig:
    return load_config(EvalConfig, None, ["checkpoints=[{name: a, path: b}]",
                                          "tasks=[{name: mmmu_val, data: x}, {name: docvqa_val, data: y}]",
                                          "progress=false", *overrides])


def test_presets_carry_qwens_published_settings():
    instruct = config("preset=qwen3vl-instruct").generation
    assert (instruct.do_sample, instruct.temperature, instruct.top_p, instruct.top_k,
            instruct.presence_penalty, instruct.max_new_tokens, instruct.seed) == (
        True, 0.7, 0.8, 20, 1.5, 32768, 3407)
    thinking = config("preset=qwen3vl-thinking").generation
    assert (thinking.do_sample, thinking.temperature, thinking.top_p, thinking.top_k,
            thinking.presence_penalty, thinking.max_new_tokens, thinking.seed) == (
        True, 0.6, 0.95, 20, 0.0, 40960, 1234)
    greedy = config().generation
    assert asdict(greedy) == asdict(GenerationConfig())            # the default changes nothing
    # A key the user set wins over the preset; the others still come from it.
    mine = config("preset=qwen3vl-instruct", "generation.temperature=0.3",
                  "generation.max_new_tokens=128").generation
    assert (mine.temperature, mine.max_new_tokens, mine.top_p, mine.presence_penalty) == (0.3, 128, 0.8, 1.5)


def test_presets_set_qwens_mmmu_pixel_budget_unless_the_task_does():
    cfg = config("preset=qwen3vl-instruct")
    mmmu, docvqa = cfg.tasks
    assert mmmu.vision == {"min_pixels": 1280 * 28 * 28, "max_pixels": 5120 * 28 * 28}
    assert docvqa.vision == {}
    assert config().tasks[0].vision == {}
    own = load_config(EvalConfig, None, ["checkpoints=[{name: a, path: b}]", "preset=qwen3vl-thinking",
                                         "tasks=[{name: mmmu_val, data: x, vision: {max_pixels: 1048576}}]"])
    assert own.tasks[0].vision == {"min_pixels": 1280 * 28 * 28, "max_pixels": 1048576}


@pytest.mark.parametrize("overrides, message", [
    (["preset=qwen3-instruct"], "preset"),
    (["samples_per_item=0"], "samples_per_item 0: must be 1 or more"),
    (["samples_per_item=3"], "samples_per_item 3: greedy decoding gives the same answer"),
    (["generation.presence_penalty=3"], "generation.presence_penalty 3.0: must be in \\[-2, 2\\]"),
])
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(*overrides)


def test_presence_penalty_matches_vllms_definition_by_hand():
    """Prompt [3, 3] (left-padded length 2), generated [1, 1, 2] and [0]: vLLM subtracts the
    penalty once per generated token id, however often it occurred, never for prompt tokens."""
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    input_ids = torch.tensor([[3, 3, 1, 1, 2], [4, 3, 0, 0, 0]])
    out = PresencePenalty(1.5, prompt_len=2)(input_ids, logits.clone())
    by_hand = [[1.0, 0.5, 1.5, 4.0, 5.0],        # 1 (twice) and 2 once each; 3 is the prompt's
               [-0.5, 2.0, 3.0, 4.0, 5.0]]       # 0 (three times) once; 4 and 3: prompt
    assert out.tolist() == by_hand
    assert presence_penalty_reference(logits.tolist(), [[1, 1, 2], [0, 0, 0]], 1.5) == by_hand
    # Nothing generated yet: unchanged. Negative penalties reward repeats, as in vLLM.
    assert torch.equal(PresencePenalty(1.5, 5)(input_ids, logits.clone()), logits)
    assert PresencePenalty(-1.0, 2)(input_ids, logits.clone())[0, 1].item() == 3.0


def test_hf_applies_the_penalty_before_temperature_and_cuts_as_vllm():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    gen = config("preset=qwen3vl-instruct").generation
    kwargs = hf_generate_kwargs(gen, prompt_len=7)
    assert [type(p) for p in kwargs["logits_processor"]] == [
        PresencePenalty, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper]
    assert (kwargs["temperature"], kwargs["top_k"], kwargs["top_p"]) == (1.0, 0, 1.0)  # ours only
    assert kwargs["logits_processor"][0].prompt_len == 7
    thinking = hf_generate_kwargs(config("preset=qwen3vl-thinking").generation, 7)
    assert "logits_processor" not in thinking and thinking["temperature"] == 0.6
    assert hf_generate_kwargs(GenerationConfig(), 7) == GenerationConfig().generate_kwargs()


def test_penalty_inside_transformers_generate():
    """In a real generate loop the processor sees prompt + generated ids: a huge penalty makes
    every generated token new, with prompt tokens still allowed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=24, n_positions=64, n_embd=16, n_layer=1, n_head=2)).eval()
    prompt = torch.tensor([[5, 6, 7, 8]])
    gen = GenerationConfig(do_sample=True, temperature=1.0, max_new_tokens=20)
    kwargs = gen.generate_kwargs()
    kwargs.update(temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0,
                  logits_processor=[PresencePenalty(1e4, prompt_len=4)])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)[0, 4:].tolist()
    assert len(out) == 20 and len(set(out)) == 20
    plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), pad_token_id=0,
                           **{**gen.generate_kwargs(), "top_k": 0})[0, 4:].tolist()
    assert len(set(plain)) < 20                                   # without it, 20 draws of 24 repeat


def result_row(score_items: list[float], unparsed: int, key: str) -> dict:
    from eval.stats import bootstrap_ci

    n = len(score_items)
    return {"task": "t", "metric": "accuracy", "score": sum(score_items) / n, "n": n, "items": "abc",
            "item_scores": score_items, "ci": list(bootstrap_ci(score_items)), "unparsed": unparsed,
            "parse_rate": 1 - unparsed / n, "failed": 0, "thinking_truncated": 0, "generated": n,
            "rescored": 0, "seconds": 1.0, "config_hash": key,
            "breakdown": {"subject/Art": {"score": score_items[0], "n": 1}}}


def test_samples_per_item_mean_and_spread_over_seeds():
    from eval.seeds import combine

    rows = [result_row([1, 0, 1, 0], 1, "k1"), result_row([1, 1, 1, 0], 0, "k2"),
            result_row([0, 0, 1, 0], 2, "k3")]
    row = combine(rows, [3407, 3408, 3409])
    assert row["score"] == pytest.approx((0.5 + 0.75 + 0.25) / 3)
    assert row["seed_scores"] == [0.5, 0.75, 0.25] and row["seeds"] == [3407, 3408, 3409]
    assert row["seed_sd"] == pytest.approx(0.25)                    # sd of 0.5, 0.75, 0.25
    assert row["item_scores"] == pytest.approx([2 / 3, 1 / 3, 1.0, 0.0], abs=1e-4)
    assert (row["unparsed"], row["unparsed_per_seed"], row["generated"]) == (1, [1, 0, 2], 12)
    assert row["breakdown"]["subject/Art"]["score"] == pytest.approx(2 / 3)
    assert row["config_hash"] == hashlib.sha1(b"k1/k2/k3").hexdigest()[:16]
    with pytest.raises(RuntimeError, match="different items"):
        combine([rows[0], dict(rows[1], items="other")], [1, 2])


def test_cache_keys_of_runs_without_a_presence_penalty_are_unchanged():
    from eval.runner import run_key

    cfg = config()
    ck, spec = cfg.checkpoints[0], cfg.tasks[0]
    generation = asdict(cfg.generation)
    del generation["presence_penalty"]
    task = {k: v for k, v in asdict(spec).items() if k != "judge"}
    payload = {"path": ck.path, "adapter": ck.adapter, "task": task, "generation": generation,
               "vision": asdict(cfg.vision), "dtype": cfg.dtype, "backend": cfg.backend}
    assert run_key(cfg, ck, spec) == hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    cfg.generation.presence_penalty = 1.5
    assert run_key(cfg, ck, spec) != hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_sampled_eval_with_the_instruct_preset_end_to_end(tmp_path, tiny, corpus):
    """preset qwen3vl-instruct (presence penalty through the HF backend) with two samples per
    item: one row with the mean and spread over seeds, each seed's predictions cached apart,
    and a rerun that generates nothing."""
    from eval.runner import evaluate

    def cfg():
        return load_config(EvalConfig, None, [
            f"checkpoints=[{{name: base, path: {tiny['dense']}}}]", f"output_dir={tmp_path / 'out'}",
            f"tasks=[{{name: synthetic_vqa, data: {corpus['eval']}, limit: 4}}]", "progress=false",
            "preset=qwen3vl-instruct", "generation.max_new_tokens=6", "samples_per_item=2"])

    (row,) = evaluate(cfg())
    assert row["seeds"] == [3407, 3408] and len(row["seed_scores"]) == 2
    assert row["score"] == pytest.approx(sum(row["seed_scores"]) / 2)
    assert row["generated"] == 8 and len(row["item_scores"]) == row["n"] == 4
    records = [json.loads(line) for line in
               (tmp_path / "out/predictions/base/synthetic_vqa.jsonl").read_text().splitlines()]
    assert len(records) == 8 and len({r["key"] for r in records}) == 2      # one cache key per seed
    (again,) = evaluate(cfg())
    assert again["generated"] == 0 and again["score"] == row["score"]
