"""Every kind of bad input in one corpus: no crash, every bad sample reported with its file and
reason, repaired kinds come out as good samples, and a training run over it completes."""

from __future__ import annotations

import json

import pytest
import yaml

from data.config import DataConfig, VisionBudget
from data.samples import BAD_SAMPLE_KEYS
from data.tools.faults import REPAIRED, audit, write_faulty_corpus
from tests.helpers.launch import TRAIN_CONFIG, run_train

UNPARSEABLE = {"bad-invalid_json_line": "invalid JSON", "bad-non_utf8_text": "not valid UTF-8"}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return write_faulty_corpus(tmp_path_factory.mktemp("faulty"))


def test_every_bad_sample_is_reported_and_nothing_crashes(faulty, processor):
    sources, expected = faulty
    result = audit(DataConfig(sources=sources, vision=VisionBudget(max_pixels=128 * 128)), processor)
    assert result["crashes"] == []
    reported = {r.sample_id: r for r in result["bad"] if r.sample_id is not None}
    assert set(reported) == set(expected) - set(UNPARSEABLE)
    for sample_id, reason in UNPARSEABLE.items():  # no id to read: named by line and reason
        assert sum(reason in r.reason for r in result["bad"] if r.sample_id is None) == 1, sample_id
    assert len(result["bad"]) == len(expected)
    source_files = {s.path for s in sources}
    assert all(r.file in source_files and r.reason for r in result["bad"])
    assert set(REPAIRED) <= set(result["good"])
    assert len(result["good"]) == 9 + len(REPAIRED)


def test_training_over_the_faulty_corpus_completes_and_reports(faulty, tiny, tmp_path):
    sources, expected = faulty
    cfg = yaml.safe_load(TRAIN_CONFIG.read_text())
    chat = next(s for s in sources if s.name == "chat")
    cfg["data"] = {"sources": [{"path": chat.path}],
                   "vision": {"max_pixels": 128 * 128}, "max_seq_len": 1024,
                   "on_bad_sample": "skip", "max_bad_fraction": 0.9}
    config = tmp_path / "faulty.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = run_train(tiny["dense"], tmp_path / "run", "train.max_steps=3", "train.batch_size=2",
                     config=config)
    # All but the truncated image are caught before step 1 (it fails only when decoded).
    in_chat = set(expected) - {"bad-unreadable_pdf", "2"}  # the PDF and COCO sources are not used
    n_bad = len(in_chat) - 1
    assert f"[data] skipping {n_bad} of" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "run/bad_samples.jsonl").open()]
    assert {r["id"] for r in records if r["stage"] == "read"} == \
        in_chat - set(UNPARSEABLE) - {"bad-truncated_image"} | {None}
    # One schema for every writer of bad_samples.jsonl (data/samples.py, README).
    assert all(tuple(r) == BAD_SAMPLE_KEYS for r in records)
    assert all(r["file"] and r["reason"] and r["source"] == "train" for r in records)  # its name
    assert (tmp_path / "run/final/adapter_model.safetensors").is_file()
