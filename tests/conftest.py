"""Shared fixtures: the tiny checkpoints and a small synthetic corpus, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from data.processor import build_processor
    from train.debug_models import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    processor = build_processor()
    return {kind: build_tiny_checkpoint(root / f"qwen3vl-{kind}", kind, 0, processor)
            for kind in ("dense", "moe")}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from data.tools.synthetic import generate

    return generate(tmp_path_factory.mktemp("corpus"), train_per_task=16, eval_per_task=4, seed=0)


@pytest.fixture(scope="session")
def processor(tiny):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny["dense"]))


@pytest.fixture(autouse=True)
def hf_datasets_cache(tmp_path, monkeypatch):
    """load_dataset's Arrow cache goes to each test's folder, not ~/.cache (tests write fixture
    datasets under the same names; a shared cache would serve one test's rows to another)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
