"""2-process DeepSpeed runs of the training entry point on CPU (gloo): ZeRO-2/3/offload, LoRA and
full fine-tuning of the tiny dense and MoE models, expert parallelism, SIGKILL + exact resume.

Every run reads a corpus where text-only and image samples alternate, so ranks regularly hold
different modalities in the same step (which hangs ZeRO-3 unless the vision tower runs on both).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.launch import losses, metrics, run_train, train_here


@pytest.fixture(scope="module")
def mixed(corpus, tmp_path_factory) -> Path:
    from data.tools.synthetic import write_mixed_modality

    return write_mixed_modality(corpus["train"], tmp_path_factory.mktemp("mixed") / "mixed.json")


def launch(model: Path, data: Path, out: Path, *overrides, faults: tuple = (), check=True,
           launcher: str = "torchrun"):
    """A 2-process run of the demo config, batch 1, 4 steps."""
    return run_train(model, out, "train.batch_size=1", "train.max_steps=4", "logging.loss_plot=false",
                     *overrides, data=data, nproc=2, launcher=launcher, faults=faults, check=check)


def assert_same_losses(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    diff = max(abs(a[k] - b[k]) for k in a)
    assert diff < tol, (diff, a, b)


def assert_reloads_complete(folder: Path) -> None:
    """final/ of a ZeRO-3 full fine-tune loads with plain transformers, every weight present."""
    from transformers import AutoModelForImageTextToText

    _, info = AutoModelForImageTextToText.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def one_process(model: Path, data: Path, out: Path, *overrides) -> None:
    """What ``launch`` runs on 2 ranks x batch 1, in this process with batch 2: the same
    samples per step and the same global token mean (tests/test_train.py checks DDP so)."""
    train_here(model, out, "train.batch_size=2", "train.max_steps=4", "logging.loss_plot=false",
               *overrides, data=data)


def test_zero3_lora_dense_mixed_modality_equals_one_process(tiny, mixed, tmp_path):
    one, z3 = tmp_path / "one", tmp_path / "z3"
    one_process(tiny["dense"], mixed, one)
    launch(tiny["dense"], mixed, z3, "distributed.deepspeed=zero3", "train.save_every=2")
    assert_same_losses(losses(one), losses(z3))
    ckpt = z3 / "checkpoint-4"
    assert (ckpt / "model/adapter_model.safetensors").is_file()  # gathered from the shards
    assert (ckpt / "deepspeed/latest").is_file() and (ckpt / "train_config.json").is_file()
    assert (z3 / "final/adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    a, b = load_file(str(one / "final/adapter_model.safetensors")), load_file(str(z3 / "final/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].numel() for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_zero3_full_sigkill_resume_equals_zero2(tiny, mixed, tmp_path):
    """A ZeRO-3 full fine-tune killed at step 3 and resumed from checkpoint-2 (partitioned
    weights and Adam state) has the losses of an uninterrupted ZeRO-2 run: a resume that lost
    the optimizer state, or a ZeRO-3 step that differed, would be off by far more."""
    killed, z2 = tmp_path / "killed", tmp_path / "z2"
    common = ["lora.enabled=false", "train.lr=1e-3", "train.save_every=2"]
    proc = launch(tiny["dense"], mixed, killed, "distributed.deepspeed=zero3", *common,
                  faults=("--kill-at-step", "3"), check=False)
    assert proc.returncode != 0 and not (killed / "checkpoint-4").exists()
    assert (killed / "checkpoint-2/deepspeed/latest").is_file()
    launch(tiny["dense"], mixed, killed, "distributed.deepspeed=zero3", *common, "train.resume=auto")
    launch(tiny["dense"], mixed, z2, "distributed.deepspeed=zero2", *common)
    assert_same_losses(losses(killed), losses(z2))
    assert_reloads_complete(killed / "final")


def test_zero3_moe_expert_parallel_equals_one_process(tiny, mixed, tmp_path):
    one, ep = tmp_path / "one", tmp_path / "ep"
    common = ["lora.enabled=false", "train.lr=1e-3", "train.max_steps=3"]
    one_process(tiny["moe"], mixed, one, *common)
    proc = launch(tiny["moe"], mixed, ep, *common, "distributed.deepspeed=zero3",
                  "distributed.expert_parallel=2")
    assert_same_losses(losses(one), losses(ep))
    for rank in (0, 1):  # each rank holds 4 of the 8 experts of every MoE layer
        assert f"[ep] rank {rank} holds [4] of 8 experts in each of 2 MoE layers" in proc.stdout
    row = metrics(ep)[-1]
    assert row["moe/aux_loss"] > 0 and "moe/load_max_over_mean/worst" in row
    assert_reloads_complete(ep / "final")  # AutoEP shards put back into the HF experts


def test_zero3_offload_lora_moe_under_the_deepspeed_launcher(tiny, mixed, tmp_path):
    out = tmp_path / "offload"
    launch(tiny["moe"], mixed, out, "distributed.deepspeed=zero3_offload", "train.max_steps=2",
           "lora.targets=[llm_attn]", "lora.modules_to_save=[]", launcher="deepspeed")
    assert (out / "final/adapter_model.safetensors").is_file()
    assert all(v == v for v in losses(out).values())  # finite


def test_expert_parallel_on_dense_model_fails_at_start(tiny):
    """The check build_engine runs on the loaded model before DeepSpeed starts (in-process: a
    2-process launch only to see this message cost 15 s)."""
    from transformers import AutoConfig

    from train.expert_parallel import check_expert_parallel
    from train.modeling import load_model

    with pytest.raises(ValueError, match=r"dense model \(no experts\): set distributed.expert_parallel=1"):
        check_expert_parallel(load_model(str(tiny["dense"])), AutoConfig.from_pretrained(str(tiny["dense"])),
                              "qwen3_vl_moe", 2, world_size=2, zero_stage=3)


def test_zero3_nan_step_is_skipped_on_every_rank(tiny, mixed, tmp_path):
    out = tmp_path / "nan"
    proc = launch(tiny["dense"], mixed, out, "distributed.deepspeed=zero3", "train.max_steps=3",
                  faults=("--nan-steps", "2"))  # NaN on rank 1 only; both must skip
    assert "step 2: non-finite loss; step skipped" in proc.stdout
    rows = metrics(out)
    assert rows[1]["loss"] is None and rows[1]["lr"] == rows[0]["lr"] != rows[2]["lr"]
    assert rows[2]["loss"] > 0 and rows[2]["nan_steps_skipped"] == 1


def test_zero3_moe_expert_lora_with_gradient_checkpointing_equals_without(tiny, mixed, tmp_path):
    lora = ["distributed.deepspeed=zero3", "train.max_steps=3", "lora.modules_to_save=[]",
            "lora.targets=[llm_attn, experts, vision, merger]"]
    launch(tiny["moe"], mixed, tmp_path / "plain", *lora)
    launch(tiny["moe"], mixed, tmp_path / "gc", *lora, "model.gradient_checkpointing=true")
    assert_same_losses(losses(tmp_path / "plain"), losses(tmp_path / "gc"))
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "gc/final/adapter_model.safetensors"))
    assert any("experts" in k for k in adapter) and all(v.numel() for v in adapter.values())


def test_zero3_lora_moe_expert_parallel_sigkill_resume_and_export(tiny, mixed, tmp_path):
    """LoRA on attention leaves AutoEP's experts frozen, which DeepSpeed 0.19.8 cannot put in a
    ZeRO-3 checkpoint: the engine keeps the trainable state only and the resume reloads the frozen
    experts from the base. Killed at step 3, resumed from checkpoint-2: the no-EP run's losses."""
    plain, ep = tmp_path / "plain", tmp_path / "ep"
    common = ["distributed.deepspeed=zero3", "lora.targets=[llm_attn]", "lora.modules_to_save=[lm_head]"]
    launch(tiny["moe"], mixed, plain, *common)
    ep_run = [*common, "distributed.expert_parallel=2", "train.save_every=2"]
    proc = launch(tiny["moe"], mixed, ep, *ep_run, faults=("--kill-at-step", "3"), check=False)
    assert proc.returncode != 0 and (ep / "checkpoint-2/deepspeed").is_dir()
    assert not (ep / "checkpoint-4").exists()
    launch(tiny["moe"], mixed, ep, *ep_run, "train.resume=auto")  # steps 3 and 4: Adam state too
    assert_same_losses(losses(plain), losses(ep))
    from safetensors.torch import load_file

    a, b = load_file(str(plain / "final/adapter_model.safetensors")), load_file(str(ep / "final/adapter_model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    from train.export import export

    assert export(ep / "checkpoint-4", tmp_path / "export") < 1e-4  # logits of base + adapter
    assert_reloads_complete(tmp_path / "export")
