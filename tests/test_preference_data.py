"""Preference pairs: every published layout read into the same pairs, bad records reported with
file / index / reason, planning (either side over budget), encoding (labels on the reply only)
and the 2B-row batch (chosen rows first, pixels in row order)."""

from __future__ import annotations

import json

import pytest
import torch

from data.config import DataConfig, SourceConfig, VisionBudget
from data.encode import IGNORE_INDEX, SampleEncoder
from data.planner import TokenPlanner
from data.preference import (
    PairEncoder,
    PreferencePair,
    collate_pairs,
    keep_last_replies,
    plan_pairs,
)
from data.samples import BadSampleLog, DataError
from data.sources.preference import load_pairs
from tests.helpers import preference_files as pf
from tests.helpers.files import write_jsonl

BUDGET = VisionBudget(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16)


@pytest.fixture(scope="module")
def offline_processor():
    from data.processor import build_processor

    return build_processor()


def read(path, fmt, **kw):
    bad = BadSampleLog("skip")
    return load_pairs(SourceConfig(path=str(path), format=fmt, **kw), bad), bad


def texts(pair: PreferencePair):
    """A pair as plain values: prompt texts per turn (whitespace-trimmed), both replies, image
    file names."""
    def text(m):
        return (m["role"], tuple("<image>" if p["type"] == "image" else p["text"].strip()
                                 for p in m["content"]))
    return ([text(m) for m in pair.prompt], text(pair.chosen), text(pair.rejected),
            [str(i).rsplit("/", 1)[-1] for i in pair.images])


EXPECTED = [
    ([("user", ("<image>", pf.QUESTION))], ("assistant", (pf.CHOSEN,)),
     ("assistant", (pf.REJECTED,)), ["red.png"]),
    ([("user", (pf.TURN1_Q,)), ("assistant", (pf.TURN1_A,)), ("user", (pf.TURN2_Q,))],
     ("assistant", (pf.BYE_CHOSEN,)), ("assistant", (pf.BYE_REJECTED,)), []),
]


@pytest.mark.parametrize("writer, fmt, use", [
    (pf.llamafactory_sharegpt, "sharegpt", "file"),
    (pf.llamafactory_sharegpt, "llamafactory", "folder"),
    (pf.swift_rlhf, "swift", "file"),
    (pf.trl_conversational, "messages", "file"),
    (pf.ours, "messages", "file"),
])
def test_every_layout_reads_as_the_same_pairs(tmp_path, writer, fmt, use):
    path = writer(tmp_path)
    pairs, bad = read(path.parent if use == "folder" else path, fmt)
    assert not bad.records
    assert [texts(p) for p in pairs] == EXPECTED
    for p in pairs:  # both sides are Samples sharing the very same media lists
        assert p.chosen_sample().images is p.rejected_sample().images is p.images
        assert p.chosen_sample().messages[:-1] == p.rejected_sample().messages[:-1] == p.prompt


def test_single_pair_layouts(tmp_path):
    for writer, fmt in ((pf.trl_standard, "messages"), (pf.llamafactory_alpaca, "llamafactory")):
        pairs, bad = read(writer(tmp_path / writer.__name__), fmt)
        assert not bad.records
        assert [texts(p) for p in pairs] == EXPECTED[:1]


def test_bad_records_are_reported_with_file_index_and_reason(tmp_path):
    img = pf.image(tmp_path)
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "q"}], "chosen": "a"},  # no rejected
        {"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "a"},
        {"messages": [{"role": "user", "content": "<image><image>q"}], "chosen": "a",
         "rejected": "b", "images": [img]},  # 2 tags, 1 image
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
         "chosen": "a", "rejected": "b"},  # prompt ends with an assistant turn
        {"chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]},
        {"id": "ok", "messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"},
    ])
    pairs, bad = read(path, "messages", name="prefs")
    assert [p.id for p in pairs] == ["ok"]
    reasons = {r.index: r.reason for r in bad.records}
    assert all(r.file == str(path) and r.source == "prefs" for r in bad.records)
    assert "missing 'rejected'" in reasons[0]
    assert "same" in reasons[1]
    assert "2 <image> tags but 1 images" in reasons[2]
    assert "user turn" in reasons[3]
    assert "different prompts" in reasons[4]
    assert sorted(reasons) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="bad.jsonl: sample 0.*missing 'rejected'"):
        load_pairs(SourceConfig(path=str(path), format="messages"), BadSampleLog("error"))


def test_swift_rows_without_a_rejected_reply_or_with_other_media(tmp_path):
    img = pf.image(tmp_path)
    turns = [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}]
    path = write_jsonl(tmp_path / "swift.jsonl", [
        {"messages": turns, "images": [img]},
        {"messages": turns, "images": [img], "rejected_response": "b",
         "rejected_images": ["other.png"]},
        {"messages": turns, "images": [img], "rejected_response": "a"},
    ])
    pairs, bad = read(path, "swift")
    assert not pairs
    reasons = [r.reason for r in bad.records]
    assert "rejected_response" in reasons[0]
    assert "'rejected_images' differs" in reasons[1]
    assert "same" in reasons[2]


def test_llamafactory_entry_must_be_a_ranking_dataset(tmp_path):
    pf.llamafactory_sharegpt(tmp_path)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    info["dpo_demo"]["ranking"] = False
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="not a ranking"):
        read(tmp_path, "llamafactory")
    info["dpo_demo"].update(ranking=True, columns={"messages": "conversations", "kto_tag": "label"})
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="KTO"):
        read(tmp_path, "llamafactory")
    with pytest.raises(DataError, match="no preference reader"):
        read(tmp_path / "x.json", "pdf")


def test_keep_last_replies_masks_earlier_assistant_turns():
    labels = torch.tensor([-100, 5, 6, -100, -100, 7, 8, -100, 9, -100])
    assert keep_last_replies(labels).tolist() == [-100] * 8 + [9, -100]
    assert keep_last_replies(labels, 2).tolist() == [-100] * 5 + [7, 8, -100, 9, -100]


def test_encoding_planning_and_the_pair_batch(tmp_path, offline_processor):
    proc = offline_processor
    pairs, _ = read(pf.ours(tmp_path), "messages")
    encoder = PairEncoder(SampleEncoder(proc, BUDGET, 4096))
    examples = [encoder.encode(p) for p in pairs]
    tok = proc.tokenizer
    for pair, ex in zip(pairs, examples):
        for side, reply in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            ids, labels = ex[f"{side}_input_ids"], ex[f"{side}_labels"]
            kept = labels[labels != IGNORE_INDEX].tolist()
            # labels: exactly this reply and its <|im_end|>, never the earlier "Hi!" turn
            assert tok.decode(kept) == reply["content"][0]["text"] + "<|im_end|>"
            assert labels.shape == ids.shape
    # the planner counts each side exactly; budgets hold per side
    planned, lengths = plan_pairs(pairs, TokenPlanner(proc, BUDGET), DataConfig(train="x"),
                                  BadSampleLog("skip"))
    assert lengths == [(len(e["chosen_input_ids"]), len(e["rejected_input_ids"]))
                       for e in examples]
    assert planned == pairs

    batch = collate_pairs(examples, tok.pad_token_id)
    b = len(examples)
    assert batch["input_ids"].shape[0] == 2 * b
    for i, ex in enumerate(examples):
        for row, side in ((i, "chosen"), (b + i, "rejected")):
            n = len(ex[f"{side}_input_ids"])
            assert torch.equal(batch["input_ids"][row, :n], ex[f"{side}_input_ids"])
            assert torch.equal(batch["labels"][row, :n], ex[f"{side}_labels"])
            assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    # only pair 0 has an image: its chosen copy, then its rejected copy (row order 0, then b)
    px = examples[0]["chosen_pixel_values"]
    assert torch.equal(batch["pixel_values"], torch.cat([px, examples[0]["rejected_pixel_values"]]))
    assert batch["image_grid_thw"].shape[0] == 2


def test_a_pair_is_over_budget_when_either_side_is(tmp_path, offline_processor):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "long", "messages": [{"role": "user", "content": "q"}], "chosen": "a",
         "rejected": "word " * 200},
        {"id": "short", "messages": [{"role": "user", "content": "q"}], "chosen": "a",
         "rejected": "b"}])
    pairs, _ = read(path, "messages")
    bad = BadSampleLog("skip")
    kept, _ = plan_pairs(pairs, TokenPlanner(offline_processor, BUDGET),
                         DataConfig(train="x", max_seq_len=64), bad)
    assert [p.id for p in kept] == ["short"]
    assert bad.records[0].sample_id == "long"
    assert bad.records[0].reason.startswith("over budget: rejected side: ")


def test_shrink_gives_the_pair_one_budget_both_sides_fit(tmp_path, offline_processor):
    from PIL import Image

    Image.new("RGB", (512, 512), "blue").save(tmp_path / "big.png")
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "big", "messages": [{"role": "user", "content": "<image>Colour?"}],
         "chosen": "Blue.", "rejected": "It is a rather dark shade of green, I think.",
         "images": ["big.png"]}])
    pairs, _ = read(path, "messages")
    budget = VisionBudget(min_pixels=32 * 32 * 4, max_pixels=512 * 512)  # 256 visual tokens
    cfg = DataConfig(train="x", max_seq_len=120)
    bad = BadSampleLog("skip")
    kept, lengths = plan_pairs(pairs, TokenPlanner(offline_processor, budget), cfg, bad)
    assert not bad.records and kept[0].vision_budget is not None
    assert kept[0].vision_budget.max_pixels < budget.max_pixels
    assert max(lengths[0]) <= 120 and lengths[0][0] < lengths[0][1]
    example = PairEncoder(SampleEncoder(offline_processor, budget, 120)).encode(kept[0])
    assert (len(example["chosen_input_ids"]), len(example["rejected_input_ids"])) == lengths[0]
    with pytest.raises(DataError, match="over budget: rejected side"):
        plan_pairs(read(path, "messages")[0], TokenPlanner(offline_processor, budget),
                   DataConfig(train="x", max_seq_len=120, over_budget="drop"), BadSampleLog("error"))
