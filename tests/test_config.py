"""Configs fail at start, naming the key, on unknown keys, wrong types and bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data.configio import ConfigError, load_config
from train.config import Config

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = "model:\n  path: some/ckpt\ndata:\n  train: some/train.json\n"


@pytest.fixture
def cfg_file(tmp_path):
    def write(text: str):
        path = tmp_path / "cfg.yaml"
        path.write_text(text)
        return path
    return write


def test_defaults_and_overrides(cfg_file):
    cfg = load_config(Config, cfg_file(MINIMAL), ["train.lr=1e-4", "train.max_steps=7",
                                                  "lora.targets=[llm_attn, vision]"])
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 7
    assert cfg.lora.targets == ["llm_attn", "vision"]
    assert cfg.model.path == "some/ckpt" and cfg.data.on_bad_sample == "error"


def test_unknown_key_is_named(cfg_file):
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrate'.*cfg\.yaml"):
        load_config(Config, cfg_file(MINIMAL + "train:\n  lrate: 0.1\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'optim'"):
        load_config(Config, cfg_file(MINIMAL), ["optim.lr=1"])


def test_wrong_type_is_named(cfg_file):
    with pytest.raises(ConfigError, match=r"'train\.max_steps' expects int, got 'ten'"):
        load_config(Config, cfg_file(MINIMAL), ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"'lora\.targets' expects a list"):
        load_config(Config, cfg_file(MINIMAL), ["lora.targets=llm_attn"])
    with pytest.raises(ConfigError, match=r"'data\.on_bad_sample' must be one of"):
        load_config(Config, cfg_file(MINIMAL), ["data.on_bad_sample=ignore"])


def test_bad_values_say_what_to_change(cfg_file):
    with pytest.raises(ConfigError, match=r"lora\.targets: unknown preset 'llm'"):
        load_config(Config, cfg_file(MINIMAL), ["lora.targets=[llm]"])
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        load_config(Config, cfg_file("data:\n  train: x.json\n"))
    with pytest.raises(ConfigError, match=r"warmup_steps must be in \[0, max_steps\)"):
        load_config(Config, cfg_file(MINIMAL), ["train.warmup_steps=500"])


def test_cli_exits_with_message_before_loading_anything(cfg_file):
    path = cfg_file(MINIMAL + "train:\n  bogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "train", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'train.bogus'" in proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("train*.yaml"))
                         + sorted((ROOT / "configs/examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    cfg = load_config(Config, path)
    for source in cfg.data.source_configs():
        cfg.data.budget(source)  # per-source budget overrides are valid


def test_mixture_config_errors_name_the_source(cfg_file):
    base = "model:\n  path: m\ndata:\n  sources:\n    - {path: a.json, %s}\n"
    with pytest.raises(ConfigError, match=r"data.sources\[0\].format' must be one of .*got 'parquet'"):
        load_config(Config, cfg_file(base % "format: parquet"))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].vision: unknown vision budget key 'max_pixel'"):
        load_config(Config, cfg_file(base % "vision: {max_pixel: 5}"))
    with pytest.raises(ConfigError, match="exactly one of data.train"):
        load_config(Config, cfg_file(base % "weight: 2"), ["data.train=x.json"])
    with pytest.raises(ConfigError, match="set train.batch_size=1"):
        load_config(Config, cfg_file(base % "weight: 2"), ["data.packing=true", "train.batch_size=4"])


@pytest.mark.parametrize("overrides, message", [
    (["distributed.expert_parallel=2"], r"needs DeepSpeed ZeRO-3: set distributed.deepspeed=zero3"),
    (["train.freeze_vision=true", "lora.targets=[llm_attn, vision]"],
     r"remove 'vision' from lora.targets or set train.freeze_vision=false"),
    (["distributed.deepspeed=zero3", "distributed.expert_parallel=2", "lora.targets=[experts]"],
     r"'experts' cannot be combined with distributed.expert_parallel > 1"),
    (["train.freeze_vision=true", "train.freeze_merger=true", "train.freeze_llm=true"],
     r"nothing would train"),
])
def test_wrong_training_combinations_fail_at_start(cfg_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Config, cfg_file(MINIMAL), overrides)
