"""Per-sample budgets in the training corpus (data/corpus.py): a sample over data.max_seq_len /
data.max_visual_tokens is shrunk (its visuals scaled down until it fits, text never cut) or
dropped with a reason."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from data.config import DataConfig, VisionBudget
from data.corpus import load_corpus
from data.encode import SampleEncoder
from data.tools.faults import _video
from data.planner import TokenPlanner
from data.samples import BadSampleLog

BUDGET = VisionBudget(min_pixels=32 * 32 * 4, max_pixels=512 * 512, video_max_pixels=128 * 128,
                      video_total_pixels=128 * 128 * 16, max_frames=16)


def _corpus(tmp_path, question_words: int = 3):
    Image.fromarray(np.zeros((600, 800, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    _video(tmp_path / "clip.mp4", 40)
    question = " ".join(["word"] * question_words)
    records = [
        {"id": "image", "image": "big.png",
         "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                           {"from": "gpt", "value": "dark"}]},
        {"id": "video", "video": "clip.mp4",
         "conversations": [{"from": "human", "value": f"<video>\n{question}"},
                           {"from": "gpt", "value": "it flickers"}]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return str(path)


def _load(processor, path, **kw):
    log = BadSampleLog("skip")
    cfg = DataConfig(train=path, vision=BUDGET, **kw)
    return load_corpus(cfg, processor, log, plan=True), log


def test_over_budget_samples_shrink_to_fit_and_encode_within_the_bound(processor, tmp_path):
    path, bound = _corpus(tmp_path), 110
    full, _ = _load(processor, path, max_seq_len=4096)
    assert [s.vision_budget for s in full.samples] == [None, None]
    assert min(full.lengths) > bound  # both are over the bound used next
    corpus, log = _load(processor, path, max_seq_len=bound)
    assert not log.records and len(corpus.samples) == 2
    for sample, planned in zip(corpus.samples, corpus.lengths):
        assert sample.vision_budget is not None and planned <= bound
        encoded = SampleEncoder(processor, BUDGET, max_seq_len=bound).encode(sample)
        assert len(encoded["input_ids"]) == planned
        assert planned > 0.6 * bound  # the largest budget that fits, not the smallest
    image = corpus.samples[0].vision_budget
    assert BUDGET.min_pixels < image.max_pixels < BUDGET.max_pixels


def test_visual_token_cap(processor, tmp_path):
    corpus, log = _load(processor, _corpus(tmp_path), max_visual_tokens=40)
    assert not log.records
    for sample in corpus.samples:
        assert TokenPlanner(processor, BUDGET).plan(sample).visual_tokens <= 40


def test_drop_policy_and_text_that_cannot_fit_are_reported(processor, tmp_path):
    path = _corpus(tmp_path)
    corpus, log = _load(processor, path, max_seq_len=110, over_budget="drop")
    assert corpus.samples == [] and len(log.records) == 2
    assert all("over budget" in r.reason and "data.max_seq_len 110" in r.reason for r in log.records)
    corpus, log = _load(processor, _corpus(tmp_path, question_words=400), max_seq_len=200)
    assert corpus.samples == []
    assert all("still over at the smallest vision budget" in r.reason for r in log.records)
