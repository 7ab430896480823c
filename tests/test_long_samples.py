"""Long samples (issue #14, planning): a long video plans exactly the tokens it encodes to at
max_seq_len far above the default, and a sample no budget fits is reported with what would let
it train (a larger max_seq_len, split over the sequence-parallel ranks)."""

from __future__ import annotations

import pytest

from data.config import DataConfig, VisionBudget
from data.corpus import load_corpus
from data.encode import SampleEncoder
from data.planner import TokenPlanner
from data.samples import BadSampleLog
from data.sources import load_source
from data.tools.synthetic import write_grey_video
from tests.helpers.files import write_json

TURNS = [{"from": "human", "value": "<video>\nWhat happens in this video?"},
         {"from": "gpt", "value": "The frames get lighter."}]
# A 2-minute video sampled at 2 fps: 240 frames, 120 temporal patches.
LONG_VIDEO = VisionBudget(fps=2, max_frames=256, video_max_pixels=320 * 240,
                          video_total_pixels=256 * 320 * 240)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    video = write_grey_video(folder / "two-minutes.mp4", 480, fps=4, width=320, height=240, gop=16)
    return write_json(folder / "train.json", [{"id": "long", "video": video.name,
                                               "conversations": TURNS}])


def test_a_two_minute_video_plans_the_tokens_it_encodes_to(processor, long_video):
    (sample,) = load_source("llava_json", long_video)
    plan = TokenPlanner(processor, LONG_VIDEO).plan(sample)
    example = SampleEncoder(processor, LONG_VIDEO, max_seq_len=262_144).encode(sample)
    assert example["video_grid_thw"].tolist() == [[120, 14, 20]]
    assert plan.total == len(example["input_ids"]) > 10_000
    assert plan.visual_tokens == 120 * 14 * 20 // 4


def test_a_sample_over_max_seq_len_says_what_would_let_it_train(processor, long_video):
    # The frames cannot shrink (min = max pixels), so only a larger max_seq_len fits it.
    budget = VisionBudget(fps=2, max_frames=256, video_max_pixels=320 * 240,
                          video_total_pixels=256 * 320 * 240, video_min_pixels=320 * 240)
    cfg = DataConfig(train=str(long_video), max_seq_len=8192, over_budget="drop", vision=budget)
    for degree, per_rank in ((1, None), (4, "each rank would hold 2")):
        bad = BadSampleLog("skip")
        assert len(load_corpus(cfg, processor, bad, plan=True, sequence_parallel=degree)) == 0
        (record,) = bad.records
        total = int(record.reason.split("over budget: ")[1].split(" tokens")[0])
        assert total > 8192
        assert f"raise data.max_seq_len to >= {total}" in record.reason
        if per_rank:
            assert (f"with distributed.sequence_parallel=4 each rank would hold {-(-total // 4)} "
                    f"of its tokens") in record.reason
        else:
            assert "distributed.sequence_parallel=N splits one sample's tokens" in record.reason
    # And at that max_seq_len it is kept, whole.
    fits = DataConfig(train=str(long_video), max_seq_len=262_144, over_budget="drop", vision=budget)
    corpus = load_corpus(fits, processor, BadSampleLog("error"), plan=True)
    assert corpus.lengths == [total]
