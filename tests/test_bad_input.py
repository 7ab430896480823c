"""Every kind of bad input in one corpus: no crash, every bad sample reported with its file and
reason, repaired kinds come out as good samples, and a training run over it completes."""

from __future__ import annotations

import json

import pytest
import yaml

from data.config import DataConfig, VisionBudget
from data.samples import BAD_SAMPLE_KEYS
from data.tools.faults import (RECORDED_REPAIRS, REPAIRED, UNPARSEABLE, UPRIGHT, audit, tally,
                               write_faulty_corpus)
from data.__main__ import main as data_main
from tests.helpers.launch import TRAIN_CONFIG, run_train

BUDGET = VisionBudget(max_pixels=128 * 128)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return write_faulty_corpus(tmp_path_factory.mktemp("faulty"))


@pytest.fixture(scope="module")
def audited(faulty, processor):
    sources, _ = faulty
    return audit(DataConfig(sources=sources, vision=BUDGET), processor)


def test_every_bad_sample_is_reported_and_nothing_crashes(faulty, audited):
    sources, expected = faulty
    result = audited
    assert result["crashes"] == []
    reported = {r.sample_id: r for r in result["bad"] if r.sample_id is not None}
    assert set(reported) == set(expected) - set(UNPARSEABLE)
    for sample_id, reason in UNPARSEABLE.items():  # no id to read: named by line and reason
        assert sum(reason in r.reason for r in result["bad"] if r.sample_id is None) == 1, sample_id
    assert len(result["bad"]) == len(expected)
    source_files = {s.path for s in sources}
    assert all(r.file in source_files and r.reason for r in result["bad"])
    assert set(REPAIRED) <= set(result["good"])
    assert len(result["good"]) == 10 + len(REPAIRED)  # 8 images, a video, a listed image
    # The reasons say what is wrong, in words a user can act on.
    assert "outside the data root" in reported["bad-path_outside_root"].reason
    assert "decompression bomb" in reported["bad-decompression_bomb"].reason
    assert "audio" in reported["bad-audio"].reason
    assert "could not be decoded" in reported["bad-undecodable_frames"].reason


def test_oriented_media_train_upright_and_filled_frames_are_on_record(faulty, audited):
    _, expected = faulty
    for sample_id in UPRIGHT:  # stored landscape, shown portrait: the grids are portrait
        assert all(h > w for _, h, w in audited["grids"][sample_id]), sample_id
    assert {r.sample_id for r in audited["repaired"]} == set(RECORDED_REPAIRS)
    assert all("could not be decoded" in r.reason for r in audited["repaired"])
    counts = tally(audited, expected)
    assert counts["missed"] == [] and counts["handled"] == counts["kinds"]


def test_check_reports_what_training_rejects_with_the_same_reasons(faulty, audited, tmp_path):
    """``python -m data check FILE`` (no model: headers only, then --decode) finds, per chat
    source, exactly the samples the training pipeline rejects, with the same reasons."""
    sources, _ = faulty
    for source in sources[:2]:
        trained = {(r.sample_id, r.reason) for r in audited["bad"] if r.file == source.path}
        for decode in (False, True):
            out = tmp_path / f"{source.name}-{decode}"
            code = data_main(["check", source.path, "--format", source.format, "--out", str(out),
                              "--no-progress", *(["--decode"] if decode else [])])
            assert code == 1
            rows = [json.loads(line) for line in (out / "bad_samples.jsonl").open()]
            found = {(r["id"], r["reason"]) for r in rows if r["stage"] == "read"}
            needs_decode = {(i, r) for i, r in trained if i == "bad-undecodable_frames"}
            assert found == (trained if decode else trained - needs_decode), (source.name, decode)
            repaired = {r["id"] for r in rows if r["stage"] == "repaired"}
            assert repaired == ({"good-few_frames_filled"} if decode and source.name == "chat"
                                else set())


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
    # All but the undecodable frames are caught before step 1 (found only when decoded).
    chat_file = open(chat.path, encoding="utf-8", errors="replace").read()
    in_chat = {k for k in expected if f'"{k}"' in chat_file} | set(UNPARSEABLE)
    n_bad = len(in_chat) - 1
    assert f"[data] skipping {n_bad} of" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "run/bad_samples.jsonl").open()]
    assert {r["id"] for r in records if r["stage"] == "read"} == \
        in_chat - set(UNPARSEABLE) - {"bad-undecodable_frames"} | {None}
    # One schema for every writer of bad_samples.jsonl (data/samples.py, README).
    assert all(tuple(r) == BAD_SAMPLE_KEYS for r in records)
    assert all(r["file"] and r["reason"] and r["source"] == "train" for r in records)  # its name
    assert (tmp_path / "run/final/adapter_model.safetensors").is_file()


def test_a_repaired_sample_reaches_the_batch_report(faulty, processor):
    """The trainer's dataset passes a sample's repairs (filled video frames) on with its batch,
    so they land in bad_samples.jsonl with stage "repaired" (train/trainer.py)."""
    from data.corpus import load_corpus
    from data.samples import BadSampleLog
    from train.data import EncodedDataset, TrainCollator

    sources, _ = faulty
    chat = next(s for s in sources if s.name == "chat")
    corpus = load_corpus(DataConfig(sources=[chat], vision=BUDGET), processor,
                         BadSampleLog("skip"), plan=True)
    index = next(i for i, s in enumerate(corpus.samples) if s.id == "good-few_frames_filled")
    batch = TrainCollator(processor.tokenizer.pad_token_id)([EncodedDataset(corpus, "skip")[index]])
    assert [r.sample_id for r in batch["repaired"]] == ["good-few_frames_filled"]
    assert "could not be decoded" in batch["repaired"][0].reason and batch["skipped"] == []


def test_check_a_config_reads_as_training_does(faulty, audited, tiny, tmp_path):
    """``python -m data check CONFIG --model DIR``: every source of a data section read and
    planned by the trainer's own code, with the processor of the checkpoint."""
    sources, _ = faulty
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"path": s.path, "format": s.format, "name": s.name,
                     **({"task": s.task} if s.task else {})} for s in sources],
        "vision": {"max_pixels": BUDGET.max_pixels}}))
    out = tmp_path / "report"
    assert data_main(["check", str(config), "--model", str(tiny["dense"]), "--out", str(out),
                      "--no-progress"]) == 1
    rows = [json.loads(line) for line in (out / "bad_samples.jsonl").open()]
    trained = {(r.sample_id, r.reason) for r in audited["bad"]}
    assert {(r["id"], r["reason"]) for r in rows} == \
        {(i, r) for i, r in trained if i != "bad-undecodable_frames"}
    assert {r["source"] for r in rows} == {s.name for s in sources}
