"""Training from a prepared cache (``data.prepared``, data/prepared.py): the same batches and
losses as encoding on the fly, packed rows included; a stale cache is refused at start."""

from __future__ import annotations

import yaml

from data.__main__ import main as data_main
from tests.helpers.launch import TRAIN_CONFIG, losses, run_train

PACKED = ("train.max_steps=3", "train.batch_size=1", "train.grad_accum=2", "data.packing=true",
          "data.pack_tokens=1024")


def test_training_on_a_prepared_cache_equals_encoding_on_the_fly(tiny, corpus, tmp_path):
    config = tmp_path / "train.yaml"
    cfg = yaml.safe_load(TRAIN_CONFIG.read_text())
    cfg["model"]["path"], cfg["data"]["train"] = str(tiny["dense"]), str(corpus["train"])
    config.write_text(yaml.safe_dump(cfg))
    prepared = tmp_path / "prepared"
    assert data_main(["prepare", str(config), "--out", str(prepared), "--no-progress"]) == 0

    fresh, cached = tmp_path / "fresh", tmp_path / "cached"
    run_train(tiny["dense"], fresh, *PACKED, config=config)
    proc = run_train(tiny["dense"], cached, *PACKED, f"data.prepared={prepared}", config=config)
    assert "prepared in" in proc.stdout
    assert losses(cached) == losses(fresh) and len(losses(fresh)) == 3

    # A cache encoded under another budget than the run's is refused, saying what differs.
    stale = run_train(tiny["dense"], tmp_path / "stale", *PACKED, f"data.prepared={prepared}",
                      "data.vision.max_pixels=32768", config=config, check=False)
    assert stale.returncode == 3
    assert "stale" in stale.stderr and "data config differs in: vision" in stale.stderr
