"""Scorers: exact match, ANLS, grounding box parsing and IoU."""

from __future__ import annotations

import pytest

from data.boxes import box_from_relative, box_to_relative, iou, xywh_to_xyxy
from eval.metrics import anls, box_accuracy, exact_match, first_box_iou, parse_boxes, strip_thinking


def test_exact_match_normalises_case_space_and_punctuation():
    assert exact_match(" Red. ", ["red"]) == 1.0
    assert exact_match("dark red", ["red"]) == 0.0
    assert exact_match("2", ["two", "2"]) == 1.0


def test_anls_threshold_and_best_gold():
    assert anls("INVOICE", ["invoice"]) == 1.0
    assert anls("INVOIC", ["invoice"]) == pytest.approx(1 - 1 / 7)
    assert anls("MEMO", ["invoice"]) == 0.0  # similarity below 0.5 scores 0
    assert anls("memo", ["invoice", "memo"]) == 1.0


@pytest.mark.parametrize("prediction, gold, distance", [
    ("kitten", "sitting", 3),      # k->s, e->i, +g
    ("flaw", "lawn", 2),           # -f, +n
    ("abc", "", 3),
    ("", "abc", 3),
    ("café", "cafe", 1),           # one code point, whatever its UTF-8 length
    ("東京都", "京都", 1),
    ("東京", "京都", 2),
    ("👍 ok", "👎 ok", 1),
    ("ab", "ba", 2),               # a transposition is two edits (Levenshtein, not Damerau)
])
def test_anls_is_one_minus_edit_distance_over_the_longer_length(prediction, gold, distance):
    expected = 1 - distance / max(len(prediction), len(gold))
    assert anls(prediction, [gold], threshold=0.0) == pytest.approx(expected)


def test_anls_hand_computed_values():
    assert anls("kitten", ["sitting"]) == pytest.approx(4 / 7)
    assert anls("  Kitten ", ["SITTING"]) == pytest.approx(4 / 7)  # case and outer space dropped
    assert anls("", [""]) == 1.0  # nothing asked, nothing said
    assert anls("", ["abc"]) == 0.0
    assert anls("Café", ["cafe"]) == pytest.approx(3 / 4)
    assert anls("ab", ["ba"]) == 0.0  # similarity 0 is below the threshold


def test_parse_boxes_formats():
    assert parse_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]') == [[1, 2, 3, 4]]
    assert parse_boxes('```json\n[\n\t{"bbox_2d": [10, 20, 30, 40]}\n]\n```') == [[10, 20, 30, 40]]
    assert parse_boxes('{"bbox_2d": [5, 6, 7, 8]}') == [[5, 6, 7, 8]]
    assert parse_boxes("[100, 200, 300, 400]") == [[100, 200, 300, 400]]
    assert parse_boxes("the box is [1,2,3,4] or [5,6,7,8]") == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_boxes("no box here") == []


def test_box_accuracy_uses_first_box_only():
    gold = [100, 100, 300, 300]
    assert box_accuracy('[{"bbox_2d": [100, 100, 300, 300]}]', gold) == (1.0, True)
    # a wrong first box is not rescued by a right second one (no best-of-N credit)
    two = '[{"bbox_2d": [600, 600, 900, 900]}, {"bbox_2d": [100, 100, 300, 300]}]'
    assert box_accuracy(two, gold) == (0.0, True)
    assert box_accuracy("garbage", gold) == (0.0, False)
    # off Qwen's [0, 1000] scale: flagged unparsed, not mapped off the image
    assert box_accuracy('[{"bbox_2d": [100, 100, 300, 1300]}]', gold) == (0.0, False)


def test_first_box_iou_is_the_continuous_score():
    gold = [100, 100, 300, 300]
    # intersection 100x100, union 2 * 200^2 - 100^2
    assert first_box_iou('[{"bbox_2d": [200, 200, 400, 400]}]', gold) == (pytest.approx(1 / 7), True)
    assert first_box_iou('[{"bbox_2d": [100, 100, 300, 300]}]', gold) == (1.0, True)
    assert first_box_iou("no box", gold) == (0.0, False)


def test_box_conversions_round_trip_and_iou():
    box = [12, 30, 60, 90]
    rel = box_to_relative(box, 96, 160)
    back = box_from_relative(rel, 96, 160)
    assert iou(back, box) > 0.97
    assert box_to_relative([0, 0, 96, 160], 96, 160) == [0, 0, 999, 999]
    assert xywh_to_xyxy([10, 20, 5, 6]) == [10, 20, 15, 26]
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_strip_thinking():
    assert strip_thinking("<think>\nhmm\n</think>\n\nred") == "red"
    assert strip_thinking("hmm, no opening tag</think>blue") == "blue"
    assert strip_thinking("plain") == "plain"


def test_thinking_truncated():
    from data.processor import build_processor
    from eval.metrics import prompt_opens_thinking, thinking_truncated

    assert thinking_truncated("<think>\nstill going")
    assert not thinking_truncated("<think>done</think> B")
    assert not thinking_truncated("B")  # an Instruct reply
    # A Thinking template opens <think> in the prompt: a reply without </think> never finished.
    assert thinking_truncated("so the answer is B", prompt_opens_thinking=True)
    assert not thinking_truncated("hmm</think>B", prompt_opens_thinking=True)
    assert prompt_opens_thinking(build_processor("qwen3_vl_thinking"))
    assert not prompt_opens_thinking(build_processor("qwen3_vl_instruct"))
