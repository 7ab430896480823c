"""LoRA presets (experts included), freeze switches, LoRA vs freeze conflicts, optimizer groups."""

from __future__ import annotations

import json

import pytest
import torch

from data.encode import SampleEncoder, VisionBudget, collate
from data.sources import load_llava_json
from tests.helpers import launch
from tests.helpers.zero3_param_groups import ZERO3_STEPS, rank_ids, zero3_model
from train.config import LoraConfig, TrainConfig
from train.lora import apply_lora
from train.modeling import load_model
from train.params import classify, freeze_parts, param_groups, part_of

# Written out independently of train.params: the parts as the Qwen3-VL architecture has them.
EXPECTED_PREFIXES = {
    "vision": ("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks."),
    "merger": ("model.visual.merger.", "model.visual.deepstack_merger_list."),
    "llm": ("model.language_model.", "lm_head."),
}
EXPERTS = (".gate_up_proj", ".down_proj")  # the fused expert weights, under any wrapper


def expected_part(name: str) -> str:
    return next(part for part, prefixes in EXPECTED_PREFIXES.items() if name.startswith(prefixes))


@pytest.fixture(scope="module")
def batch(corpus, processor):
    enc = SampleEncoder(processor, VisionBudget(64 * 64, 256 * 256))
    return collate([enc.encode(s) for s in load_llava_json(corpus["train"])[:2]],
                   processor.tokenizer.pad_token_id)


def lora(**kw) -> LoraConfig:
    return LoraConfig(**{"r": 4, "alpha": 8, **kw})


def train_steps(model, batch, steps: int = 2):
    opt = torch.optim.AdamW(param_groups(model, TrainConfig(lr=1e-2)))
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_every_parameter_falls_in_exactly_one_part(tiny, kind):
    model = load_model(str(tiny[kind]))
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    by_part = classify(model)
    assert sorted(sum(by_part.values(), [])) == sorted(names)
    for part, part_names in by_part.items():
        assert part_names and all(expected_part(n) == part for n in part_names), part
    assert "model.visual.deepstack_merger_list.1.linear_fc2.weight" in by_part["merger"]
    assert "model.visual.pos_embed.weight" in by_part["vision"]
    # Wrapped names (peft, DDP / DeepSpeed) classify like the bare ones.
    assert part_of("module.base_model.model.model.visual.merger.linear_fc1.lora_A.default.weight") == "merger"
    with pytest.raises(ValueError, match="none of the Qwen3-VL parts"):
        part_of("model.audio_tower.conv.weight")


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_freeze_switches_train_exactly_the_unfrozen_parts(tiny, kind):
    model = load_model(str(tiny[kind]))
    names = [n for n, _ in model.named_parameters()]
    for vision in (False, True):
        for merger in (False, True):
            for llm in (False, True):
                if vision and merger and llm:
                    continue
                cfg = TrainConfig(freeze_vision=vision, freeze_merger=merger, freeze_llm=llm)
                counts = freeze_parts(model, cfg)
                frozen = {p for p, f in [("vision", vision), ("merger", merger), ("llm", llm)] if f}
                trainable = {n for n, p in model.named_parameters() if p.requires_grad}
                assert trainable == {n for n in names if expected_part(n) not in frozen}, cfg
                assert {p for p, c in counts.items() if c} == {"vision", "merger", "llm"} - frozen


def test_tied_embeddings_freeze_with_the_llm(tiny):
    model = load_model(str(tiny["dense"]))
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # as the 2B/4B tie them
    assert "lm_head.weight" in classify(model)["llm"]
    freeze_parts(model, TrainConfig(freeze_llm=True))
    assert not model.lm_head.weight.requires_grad
    assert all(not p.requires_grad for n, p in model.named_parameters() if expected_part(n) == "llm")


def test_expert_lora_trains_adapters_and_leaves_base_experts(tiny, batch):
    model = apply_lora(load_model(str(tiny["moe"])), lora(targets=["experts"]), TrainConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # Per layer: two adapted parameters (gate_up, down), each with lora_A and lora_B.
    assert len(trainable) == 2 * 2 * 2 and all(".mlp.experts." in n and ".lora_" in n for n in trainable)
    train_steps(model, batch)
    after = dict(model.named_parameters())
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        assert changed == (name in trainable), name
    base_experts = [n for n in before if n.endswith(EXPERTS)]
    assert len(base_experts) == 4  # the fused weights themselves are still there, untouched


def test_expert_lora_adapter_reloads_to_identical_logits(tiny, batch, tmp_path):
    model = apply_lora(load_model(str(tiny["moe"])),
                       lora(targets=["llm_attn", "experts", "merger"]), TrainConfig())
    train_steps(model, batch)
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
        base = model.get_base_model()
        with model.disable_adapter():
            untouched = base(**batch).logits
    assert not torch.allclose(trained, untouched)  # the adapters do change the output
    model.save_pretrained(str(tmp_path / "adapter"))
    reloaded = load_model(str(tiny["moe"]), adapter=str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, trained)


@pytest.mark.parametrize("rslora,expected", [(True, 8 / 4 ** 0.5), (False, 8 / 4)])
def test_rslora_scaling_on_linear_and_expert_adapters(tiny, rslora, expected):
    model = apply_lora(load_model(str(tiny["moe"])),
                       lora(targets=["llm_attn", "experts", "vision"], use_rslora=rslora))
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    scalings = [m.scaling["default"] for m in layers]
    kinds = {type(m).__name__ for m in layers}
    assert {"Linear", "ParamWrapper"} <= kinds
    assert scalings and all(s == pytest.approx(expected) for s in scalings)


def test_dora_on_linear_presets(tiny, batch):
    model = apply_lora(load_model(str(tiny["dense"])), lora(targets=["llm_attn", "vision"], use_dora=True))
    magnitudes = [n for n, p in model.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 2 * 4 + 2 * 4  # 4 attention projections + 4 vision linears per layer
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("kind,targets,extra,match", [
    ("dense", ["experts"], {}, "no MoE experts; adapt its MLPs with 'llm_mlp'"),
    ("moe", ["llm_attn", "llm_mlp"], {}, "match no module.*adapt its experts with 'experts'"),
    ("moe", ["experts"], {"use_dora": True}, "set lora.use_dora=false"),
    ("moe", ["experts"], {"dropout": 0.1}, "set lora.dropout=0"),
    ("dense", ["llm_attn"], {"modules_to_save": ["no_such_head"]}, "no module named 'no_such_head'"),
])
def test_lora_config_errors_say_what_to_change(tiny, kind, targets, extra, match):
    model = load_model(str(tiny[kind]))
    with pytest.raises(ValueError, match=match):
        apply_lora(model, lora(targets=targets, **extra), TrainConfig())


@pytest.mark.parametrize("freeze,targets,save,match", [
    ("freeze_vision", ["llm_attn", "vision"], [], r"'vision'.*train.freeze_vision=true"),
    ("freeze_merger", ["merger"], [], r"'merger'.*train.freeze_merger=false"),
    ("freeze_llm", ["vision", "llm_attn"], [], r"remove 'llm_attn' from lora.targets"),
    ("freeze_vision", ["llm_attn"], ["pos_embed"], r"remove 'pos_embed' from lora.modules_to_save"),
    ("freeze_llm", ["vision"], ["lm_head"], r"lora.modules_to_save includes 'lm_head'.*freeze_llm"),
])
def test_lora_inside_a_frozen_part_is_a_startup_error(tiny, freeze, targets, save, match):
    model = load_model(str(tiny["dense"]))
    with pytest.raises(ValueError, match=match):
        apply_lora(model, lora(targets=targets, modules_to_save=save), TrainConfig(**{freeze: True}))


def test_lora_with_frozen_parts_trains_only_adapters_of_the_others(tiny):
    # The demo's targets and modules_to_save, with the vision tower frozen minus its preset.
    model = apply_lora(load_model(str(tiny["dense"])),
                       lora(targets=["llm_attn", "llm_mlp", "merger"], modules_to_save=["lm_head"]),
                       TrainConfig(freeze_vision=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert {part_of(n) for n in trainable} == {"merger", "llm"}
    assert any(n.startswith("base_model.model.lm_head.modules_to_save.") for n in trainable)


def test_param_groups_lr_and_weight_decay_per_part(tiny, batch):
    cfg = TrainConfig(lr=1e-4, vision_lr=1e-5, merger_lr=5e-5, weight_decay=0.1, freeze_llm=False)
    model = load_model(str(tiny["dense"]))
    freeze_parts(model, cfg)
    groups = param_groups(model, cfg)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("vision", 1e-5, 0.1), ("vision.no_decay", 1e-5, 0.0), ("merger", 5e-5, 0.1),
        ("merger.no_decay", 5e-5, 0.0), ("llm", 1e-4, 0.1), ("llm.no_decay", 1e-4, 0.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        part = g["name"].split(".")[0]
        assert all(expected_part(names[id(p)]) == part for p in g["params"])
        assert all((p.ndim == 1) == g["name"].endswith("no_decay") for p in g["params"])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once

    # Frozen parts drop out; the same groups on a LoRA model hold only adapters.
    frozen_cfg = TrainConfig(lr=1e-4, vision_lr=1e-5, freeze_llm=True)
    model = apply_lora(model, lora(targets=["vision", "merger"]), frozen_cfg)
    groups = param_groups(model, frozen_cfg)
    assert [(g["name"], g["lr"]) for g in groups] == [("vision", 1e-5), ("merger", 1e-4)]
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    opt = torch.optim.AdamW(groups)
    model(**batch).loss.backward()
    opt.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-4]


# --- DeepSpeed: the groups as model_parameters of a 2-process ZeRO-3 run with expert LoRA ------

def test_param_groups_drive_zero3_with_expert_lora(tiny, tmp_path):
    """The groups as model_parameters of a 2-process ZeRO-3 run with expert LoRA
    (tests/helpers/zero3_param_groups.py): DeepSpeed keeps them and steps like plain AdamW."""
    launch.run(launch.entry("tests.helpers.zero3_param_groups", nproc=2)
               + [str(tiny["moe"]), str(tmp_path)], timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # DeepSpeed keeps each group's name, lr and weight decay.
    assert sorted(map(tuple, ranks[0]["groups"])) == [("llm", 2e-2, 0.1), ("llm.no_decay", 2e-2, 0.0)]

    # Reference: one process, plain AdamW over the same groups, the mean loss of both sequences.
    model, cfg = zero3_model(str(tiny["moe"]))
    model.train()  # as DeepSpeed's engine: the MoE router's aux loss only counts in training
    groups = param_groups(model, cfg)
    opt = torch.optim.AdamW(groups)
    for step in range(ZERO3_STEPS):
        losses = [model(input_ids=rank_ids(r), labels=rank_ids(r)).loss for r in (0, 1)]
        (sum(losses) / 2).backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad()
        for r in (0, 1):
            assert ranks[r]["losses"][step] == pytest.approx(losses[r].item(), rel=1e-5), (step, r)
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]
    # The weights a vLLM engine is sent, gathered from the ZeRO-3 shards on each rank: the
    # reference's merged weights.
    from safetensors.torch import load_file

    from train.objectives.rollout_vllm import inference_weights

    with inference_weights(model) as expected:
        for r in (0, 1):
            sent = load_file(str(tmp_path / f"rank{r}_weights.safetensors"))
            assert sent.keys() == expected.keys()
            for name, value in expected.items():
                torch.testing.assert_close(sent[name], value, rtol=1e-4, atol=1e-6, msg=name)

