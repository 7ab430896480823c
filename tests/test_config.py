"""Configs fail at start, naming the key, on unknown keys, wrong types and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.configio import ConfigError, config_keys, config_main, load_config
from eval.config import EvalConfig
from tests.helpers import launch
from train.config import Config
from train.lora import TARGET_PRESETS

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
    with pytest.raises(ConfigError, match=r"known keys at this level: .*\bgrad_accum, keep_best\b"):
        load_config(Config, cfg_file(MINIMAL), ["train.lrate=0.1"])


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
    proc = launch.run(launch.entry("train") + [str(path)], check=False, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'train.bogus'" in proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("train*.yaml"))
                         + sorted((ROOT / "configs/examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    cfg = load_config(Config, path)
    sources = cfg.data.source_configs()
    assert cfg.model.path and sources  # a model to train and data to train it on
    for source in sources:
        budget = cfg.data.budget(source)  # per-source budget overrides are valid
        assert 0 < budget.min_pixels <= budget.max_pixels, source.name


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


def cli_help(config_cls, capsys) -> str:
    """What ``python -m <stage> --help`` prints, its line wrapping undone."""
    with pytest.raises(SystemExit) as done:
        config_main("python -m stage", "the stage", config_cls, run=None, argv=["--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def help_of(config_cls, key: str) -> str:
    return next(f.metadata["help"] for name, _, f, _ in config_keys(config_cls) if name == key)


@pytest.mark.parametrize("config_cls", [Config, EvalConfig], ids=["train", "eval"])
def test_every_config_key_has_help(config_cls):
    """A new field without ``metadata={"help": ...}`` fails here (and would be a bare line in
    ``--help``)."""
    keys = list(config_keys(config_cls))
    undocumented = [name for name, _, f, _ in keys if not f.metadata.get("help", "").strip()]
    assert not undocumented, f"config keys without metadata help: {undocumented}"
    assert len(keys) > 20  # the walk reaches the nested sections


def test_train_help_lists_every_key_with_type_default_and_help(capsys):
    text = cli_help(Config, capsys)
    assert "usage: python -m stage" in text
    assert f"train.lr (float, default 0.0001): {help_of(Config, 'train.lr')}" in text
    assert ("lora.targets (list[str], default [llm_attn, llm_mlp]): "
            f"{help_of(Config, 'lora.targets')}") in text
    for key in ("data.vision.max_pixels", "distributed.expert_parallel", "data.sources[].path"):
        assert f"{key} (" in text and help_of(Config, key) in text
    missing = [name for name, *_ in config_keys(Config) if f"{name} (" not in text]
    assert not missing, f"--help leaves out {missing}"
    assert all(preset in help_of(Config, "lora.targets") for preset in TARGET_PRESETS)


def test_eval_help_lists_every_key(capsys):
    text = cli_help(EvalConfig, capsys)
    assert (f"generation.max_new_tokens (int, default 64): "
            f"{help_of(EvalConfig, 'generation.max_new_tokens')}") in text
    assert "tasks[].name (str, default '')" in text and "vision.fps (float, default 2.0)" in text
    missing = [name for name, *_ in config_keys(EvalConfig) if f"{name} (" not in text]
    assert not missing, f"--help leaves out {missing}"


def test_media_roots_and_llamafactory_subset_reach_the_source(cfg_file):
    cfg = load_config(Config, cfg_file(MINIMAL), ["data.image_root=/pics", "data.video_root=/clips",
                                                  "data.allow_outside_root=true"])
    (source,) = cfg.data.source_configs()
    assert (source.image_root, source.video_root, source.allow_outside_root) == \
        ("/pics", "/clips", True)
    base = "model:\n  path: m\ndata:\n  sources:\n    - {path: d/dataset_info.json, %s}\n"
    cfg = load_config(Config, cfg_file(base % "format: llamafactory, subset: mllm_demo"))
    (source,) = cfg.data.source_configs()
    assert source.subset == "mllm_demo" and source.name == "mllm_demo"
    assert source.allow_outside_root is False and source.video_root is None
    with pytest.raises(ConfigError, match="formats hf_dataset, refcoco, screenspot and "
                                          "llamafactory read one, not alpaca"):
        load_config(Config, cfg_file(base % "format: alpaca, subset: x"))
