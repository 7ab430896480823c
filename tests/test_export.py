"""Export: LoRA merged (dense; MoE with expert LoRA), ZeRO-3 and ZeRO-3 + AutoEP shards
consolidated; each export reloads with plain from_pretrained and reproduces the training-time
model's logits (within 1e-5) and greedy generation on the verification sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.helpers import launch
from train.export import SampleOutputs, export, sample_outputs, verify_export

ATTN = r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
MLP = r"model\.language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)"
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def lora_run(base: Path, out: Path, **lora_kwargs):
    """A LoRA run's output_dir as the trainer writes it, adapters moved away from their zero
    init (a fresh adapter is a no-op and would hide a merge that does nothing).
    Returns (the run folder, the training-time peft model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(base))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora_kwargs))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.2)
    run_config = {"model": {"path": str(base), "dtype": "float32"}, "lora": {"enabled": True}}
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(run_config))
    (out / "checkpoint-2/train_config.json").write_text(json.dumps(run_config))
    model.save_pretrained(str(out / "checkpoint-2/model"))
    torch.save({"step": 2}, out / "checkpoint-2/trainer_state.pt")  # marks it complete
    return out, model.eval()


def assert_reproduces(export_dir: Path, reference: SampleOutputs, processor):
    """Plain transformers reload: same logits (1e-5) and the same greedy tokens."""
    from transformers import AutoModelForImageTextToText

    assert not (export_dir / "adapter_config.json").exists()
    assert (export_dir / "generation_config.json").is_file()
    model = AutoModelForImageTextToText.from_pretrained(str(export_dir))
    got = sample_outputs(model, processor, max_new_tokens=len(reference.generated))
    assert (got.logits - reference.logits).abs().max().item() <= 1e-5
    assert got.generated == reference.generated


def test_dense_lora_attention_mlp_merged(tiny, processor, tmp_path):
    run, peft_model = lora_run(tiny["dense"], tmp_path / "run", target_modules=f"(?:{ATTN}|{MLP})",
                               modules_to_save=["lm_head"])
    reference = sample_outputs(peft_model, processor)
    with peft_model.disable_adapter():
        base_logits = sample_outputs(peft_model, processor).logits
    assert (reference.logits - base_logits).abs().max() > 0.1  # the adapter matters
    # ZeRO-3 + LoRA checkpoints also hold deepspeed/; the gathered adapter is what counts.
    (run / "checkpoint-2/deepspeed/state").mkdir(parents=True)
    (run / "checkpoint-2/deepspeed/latest").write_text("state")

    diff = export(run / "checkpoint-2", tmp_path / "export")
    assert diff <= 1e-5
    assert_reproduces(tmp_path / "export", reference, processor)
    weights = tensors(tmp_path / "export")
    assert not any("lora" in k or "modules_to_save" in k for k in weights)
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(str(tmp_path / "export")).tokenizer.vocab_size > 0

    with pytest.raises(ValueError, match="holds the input"):  # --overwrite must not delete it
        export(run / "checkpoint-2", run, overwrite=True)
    assert (run / "checkpoint-2/model/adapter_config.json").is_file()

    export(run, tmp_path / "bf16", dtype="bfloat16", verify=False)  # a run folder: latest ckpt
    assert {t.dtype for t in tensors(tmp_path / "bf16").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16/config.json").read_text())["dtype"] == "bfloat16"


def test_moe_expert_lora_merged_in_hub_layout(tiny, processor, tmp_path):
    run, peft_model = lora_run(tiny["moe"], tmp_path / "run", target_modules=ATTN,
                               target_parameters=EXPERTS)
    reference = sample_outputs(peft_model, processor)
    # As the trainer's final/: the adapter and the processor, the run config one level up.
    final = run / "final"
    peft_model.save_pretrained(str(final))
    processor.save_pretrained(str(final))

    assert export(final, tmp_path / "export") <= 1e-5
    assert_reproduces(tmp_path / "export", reference, processor)
    base, merged = tensors(tiny["moe"]), tensors(tmp_path / "export")
    for layer in (0, 1):
        prefix = f"model.language_model.layers.{layer}.mlp.experts."
        # Hub layout: gate_up (E, H, 2I), down (E, I, H); every expert got its LoRA delta.
        assert merged[prefix + "gate_up_proj"].shape == (8, 64, 96)
        assert merged[prefix + "down_proj"].shape == (8, 48, 64)
        for name in ("gate_up_proj", "down_proj"):
            delta = (merged[prefix + name] - base[prefix + name]).flatten(1).abs().amax(1)
            assert (delta > 1e-4).all(), (name, delta)


def test_full_finetune_moe_folder_rewritten_in_hub_layout(tiny, processor, tmp_path):
    """Full fine-tuning without ZeRO-3 saves model/ with save_pretrained, experts in
    transformers' in-memory layout (E, 2I, H), which does not load under ZeRO-3; the export
    stores the hub layout and the same model."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny["moe"]))
    with torch.no_grad():
        model.model.language_model.layers[0].mlp.experts.gate_up_proj.mul_(1.5)
    ckpt = tmp_path / "run/checkpoint-1"
    model.save_pretrained(str(ckpt / "model"))
    (ckpt / "train_config.json").write_text(json.dumps({"model": {"path": str(tiny["moe"])}}))
    gate_up = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    assert tensors(ckpt / "model")[gate_up].shape == (8, 96, 64)

    assert export(ckpt, tmp_path / "export") <= 1e-5
    assert tensors(tmp_path / "export")[gate_up].shape == (8, 64, 96)
    assert_reproduces(tmp_path / "export", sample_outputs(model, processor), processor)

    # A folder saved with AutoEP's layer names (one rank's experts) would load with random
    # experts; it is refused instead.
    from safetensors.torch import save_file

    weights = tensors(ckpt / "model")
    weights[gate_up.replace("gate_up_proj", "w1")] = weights.pop(gate_up)[:4, :48].contiguous()
    for shard in (ckpt / "model").glob("*.safetensors"):
        shard.unlink()
    save_file(weights, str(ckpt / "model/model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"do not match .*missing \['model.language_model.layers"
                                         r".0.mlp.experts.gate_up_proj'\].*AutoEP"):
        export(ckpt, tmp_path / "export2")


def two_processes(helper: str, *args) -> None:
    """``torchrun --nproc_per_node 2 -m tests.helpers.HELPER ARGS``."""
    launch.run(launch.entry(f"tests.helpers.{helper}", nproc=2) + [str(a) for a in args])


def zero3_run(model: Path, out: Path, *args) -> Path:
    """2-process gloo ZeRO-3 training run -> its output_dir (see the helper's docstring)."""
    two_processes("zero3_checkpoint", "--model", model, "--out", out, *args)
    return out


def live_reference(run: Path) -> SampleOutputs:
    saved = torch.load(run / "reference.pt")
    return SampleOutputs(saved["logits"], saved["generated"])


def test_zero3_full_finetune_consolidated_by_cli(tiny, processor, tmp_path, capsys):
    from train.export.__main__ import main

    run = zero3_run(tiny["dense"], tmp_path / "run")
    out = tmp_path / "export"
    assert main([str(run / "checkpoint-3"), "--out", str(out)]) == 0  # python -m train.export
    printed = capsys.readouterr().out
    figure = [line for line in printed.splitlines() if line.startswith("export_logits_max_abs_diff=")]
    assert figure and float(figure[0].split("=")[1]) <= 1e-5, printed
    assert "export_generation_equal=true" in printed
    # The live, still-sharded model at the end of training is the reference.
    assert_reproduces(out, live_reference(run), processor)
    base, trained = tensors(tiny["dense"]), tensors(out)
    assert trained.keys() == base.keys()
    assert max((trained[k] - base[k]).abs().max() for k in base) > 1e-3  # it trained
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == json.loads(
        (tiny["dense"] / "generation_config.json").read_text())["eos_token_id"]


def test_zero3_autoep_experts_consolidated(tiny, processor, tmp_path):
    """AutoEP with 2 ranks (4 experts each) plus a frozen vision tower (frozen ZeRO-3
    fragments are joined separately): experts come back fused, in the hub layout."""
    run = zero3_run(tiny["moe"], tmp_path / "run", "--ep", "2", "--freeze-vision")
    assert export(run / "checkpoint-3", tmp_path / "export") <= 1e-5
    assert_reproduces(tmp_path / "export", live_reference(run), processor)
    base, trained = tensors(tiny["moe"]), tensors(tmp_path / "export")
    assert trained.keys() == base.keys()
    for k in base:
        assert trained[k].shape == base[k].shape, k  # experts in the hub layout, as the base
        moved = (trained[k] - base[k]).abs().max() > 0
        assert moved == (not k.startswith("model.visual")), k  # frozen stays, the rest trained
    # Reloaded under ZeRO-3 zero.Init, where a non-hub expert layout fails (STACK-NOTES pitfall 3).
    two_processes("zero3_reload", tmp_path / "export", tmp_path / "reloaded.pt")
    reloaded, live = torch.load(tmp_path / "reloaded.pt"), live_reference(run)
    assert (reloaded["logits"] - live.logits).abs().max() <= 1e-5
    assert reloaded["generated"] == live.generated


def test_not_a_checkpoint_fails_naming_path_and_expectation(tmp_path, capsys):
    from train.export.__main__ import main

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes: not a training checkpoint.*expected a checkpoint-N"):
        export(folder, tmp_path / "out")
    (tmp_path / "run/checkpoint-5/model").mkdir(parents=True)  # a checkpoint without weights
    with pytest.raises(ValueError, match=r"checkpoint-5: not a training checkpoint \(model/ holds "):
        export(tmp_path / "run/checkpoint-5", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing: no such folder"):
        export(tmp_path / "missing", tmp_path / "out")
    moved = tmp_path / "moved/checkpoint-1"  # its base was moved away after training
    (moved / "model").mkdir(parents=True)
    (moved / "model/adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (moved / "train_config.json").write_text(json.dumps({"model": {"path": "outputs/models/gone"}}))
    with pytest.raises(FileNotFoundError, match="base model outputs/models/gone .* pass --base DIR"):
        export(moved, tmp_path / "out")
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 2
    assert f"{folder}: not a training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_verify_export_reports_a_different_model(tiny, processor):
    """The check itself can fail: the tiny dense and MoE models are different models."""
    from transformers import AutoModelForImageTextToText

    from train.export import ExportMismatch

    dense = AutoModelForImageTextToText.from_pretrained(str(tiny["dense"]))
    with pytest.raises(ExportMismatch, match="greedy generation differs.*max abs logit"):
        verify_export(dense, tiny["moe"], processor)
