"""MMMU: the published column layout loads (images in tag order, Qwen-style prompts, parquet and
save_to_disk copies), and both scorers handle tricky predictions without guessing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from data.media.dataset_images import open_ref
from data.samples import DataError
from eval.tasks.mmmu import MMMU_TASKS, subject
from eval.tasks.mmmu.scoring import score_choice, score_open
from tests.helpers.benchmark_data import (MMMU_COLORS, mmmu_folder, mmmu_png, mmmu_rows,
                                          mmmu_subjects)

TASK = MMMU_TASKS[0]


def spec(data, **kw):
    return SimpleNamespace(**{"data": str(data), "split": None, "subset": None, "prompt": None,
                              "image_root": None, **kw})


def colors(sample) -> list[tuple]:
    return [open_ref(ref).convert("RGB").getpixel((0, 0)) for ref in sample.images]


def test_parquet_layout_loads_images_in_tag_order(tmp_path):
    samples = sorted(TASK.load(spec(mmmu_folder(tmp_path / "mmmu"))), key=lambda s: s.id)
    mc, open_q = samples
    assert [s.id for s in samples] == ["validation_Art_1", "validation_Art_Theory_1"]
    assert [subject(s) for s in samples] == ["Art", "Art_Theory"]
    # <image 2> comes first, then <image 1>; the repeated <image 2> stays as text.
    assert colors(mc) == [MMMU_COLORS["red"], MMMU_COLORS["green"]]
    assert mc.prompt_messages()[0]["content"] == [
        {"type": "text", "text": "Question: "}, {"type": "image"},
        {"type": "text", "text": " Which colour is the square in "}, {"type": "image"},
        {"type": "text", "text": "? Compare <image 2>.\nOptions:\nA. Red\nB. Green\nC. Blue\n"
                                 "Answer with the option's letter from the given choices directly."}]
    assert mc.answer() == "B"
    assert colors(open_q) == [MMMU_COLORS["blue"]]
    assert open_q.prompt_messages()[0]["content"][-1]["text"] == (
        "?\nAnswer the question using a single word or phrase.")
    assert open_q.meta["answers"] == ["1,200", "1200.0"]
    assert TASK.breakdown(open_q) == {"subject": "Art_Theory", "question_type": "open"}
    assert TASK.score("The answer is B", mc) == (1.0, True)
    assert TASK.score("There are 1200 squares.", open_q) == (1.0, True)


def test_save_to_disk_and_prompt_override(tmp_path):
    from datasets import DatasetDict, concatenate_datasets

    ds = concatenate_datasets(list(mmmu_subjects().values()))
    DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    samples = TASK.load(spec(tmp_path / "saved", prompt="{question_type}: {question}|{options}"))
    assert len(samples) == 2
    assert samples[1].prompt_messages()[0]["content"] == [
        {"type": "text", "text": "open: How many squares are in "}, {"type": "image"},
        {"type": "text", "text": "?|"}]
    with pytest.raises(DataError, match=r"placeholder \{answer\}"):
        TASK.load(spec(tmp_path / "saved", prompt="{question} {answer}"))


def test_bad_rows_name_the_row(tmp_path):
    ds = mmmu_rows("Art", [{"id": "validation_Art_1", "question": "See <image 3>.",
                            "options": "['a', 'b']", "answer": "A",
                            "question_type": "multiple-choice", "image_1": mmmu_png("red")}])
    ds.to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"row 0 \(id validation_Art_1\).*image_3 is empty"):
        TASK.load(spec(tmp_path))


OPTIONS = ["Paris", "London", "Berlin", "New Paris"]


@pytest.mark.parametrize("prediction, expected", [
    ("B", (1.0, True)),
    ("(B)", (1.0, True)),
    ("B.", (1.0, True)),
    ("**B**", (1.0, True)),
    ("B. London", (1.0, True)),
    ("The answer is B", (1.0, True)),
    ("Answer: (B)", (1.0, True)),
    ("the correct option is b.", (1.0, True)),
    ("London", (1.0, True)),
    ("It is London, the capital.", (1.0, True)),
    ("A is wrong; the answer is B.", (1.0, True)),   # last explicit statement wins
    ("The answer is A. Wait, the answer is B", (1.0, True)),
    ("(A) or (B)", (0.0, False)),                     # several letters: ambiguous
    ("A cat sits there, B", (1.0, True)),             # "A cat" is an article
    ("I think London", (1.0, True)),
    ("The answer is C", (0.0, True)),
    ("Berlin", (0.0, True)),
    ("New Paris", (0.0, True)),                       # "Paris" inside a longer option yields
    ("Paris", (0.0, True)),
    ("Paris or London", (0.0, False)),
    ("I don't know", (0.0, False)),                   # nothing parses: no random guess
    ("", (0.0, False)),
    ("<think>It could be B", (0.0, False)),           # truncated thinking
    ("<think>maybe A</think>B", (1.0, True)),
    ("reasoning without opening tag</think>\nB", (1.0, True)),
    ("E", (0.0, False)),                              # not an option letter
])
def test_choice_scorer(prediction, expected):
    assert score_choice(prediction, OPTIONS, "B") == expected


# Issue #16: replies Qwen models write, against MMMU's rule (the stated answer is the answer;
# naming an option is not choosing it; several letters without one stated are not a choice).
@pytest.mark.parametrize("prediction, gold, expected", [
    # The answer stated, then other options discussed: the stated one, not the last mentioned.
    ("The answer is C. Option A is wrong because Paris is in France.", "C", (1.0, True)),
    ("Answer: C\nExplanation: option B mentions London, which is not it.", "C", (1.0, True)),
    ("The correct option is C; choice D is a trap.", "C", (1.0, True)),
    # One option rejected, another affirmed by its text.
    ("It is not Paris; it is London.", "B", (1.0, True)),
    ("London, rather than Paris.", "B", (1.0, True)),
    ("Paris is wrong. London is the capital.", "B", (1.0, True)),
    ("Paris is wrong and London is wrong.", "B", (0.0, False)),     # nothing affirmed
    # Letters affirmed or rejected by name.
    ("A is incorrect. B is correct.", "B", (1.0, True)),
    ("Not A; B.", "B", (1.0, True)),
    ("C is the right answer", "C", (1.0, True)),
    # Several letters: ambiguous, whichever way they are joined.
    ("A and C", "C", (0.0, False)),
    ("A and C", "A", (0.0, False)),
    ("Both A and C are plausible.", "C", (0.0, False)),
    ("The answer is A and C", "C", (0.0, False)),
    ("The answer is (A), (C)", "A", (0.0, False)),
    ("The answer is B and a good reason is the map.", "B", (1.0, True)),  # "a" is a word here
    ("This is not a trick: B", "B", (1.0, True)),                     # "not a" rejects no letter
    ("I think the answer is a tricky one: B", "B", (1.0, True)),     # "is a tricky": an article
])
def test_choice_scorer_stated_rejected_and_ambiguous(prediction, gold, expected):
    assert score_choice(prediction, OPTIONS, gold) == expected


@pytest.mark.parametrize("prediction, gold, expected", [
    ("1200", "1200", (1.0, True)),
    ("1,200", "1200", (1.0, True)),
    ("There are 1,200 squares.", "['1,200', '1200.0']", (1.0, True)),
    ("$1,200.00", "1200", (1.0, True)),
    ("The answer is 25%", "25%", (1.0, True)),
    ("12 cm", "12 cm", (1.0, True)),
    ("x = 3.14159", "3.14", (1.0, True)),
    ("The answer is 3.1", "3.14", (0.0, True)),
    ("0.5", "1/2", (1.0, True)),
    ("The area is 12 cm^2, which is the answer: 13", "12", (0.0, True)),
    ("Step 1 gives 7, so the total is 12", "12", (1.0, True)),
    ("The answer is 24, which is correct", "24", (1.0, True)),
    ("Positive.", "positive", (1.0, True)),
    ("The effect is a positive one", "positive", (1.0, True)),
    ("negative", "['positive', 'up']", (0.0, True)),
    ("It goes up", "['positive', 'up']", (1.0, True)),
    ("H2O", "H2O", (1.0, True)),
    ("<think>count them: 12", "12", (0.0, False)),
    ("  ", "12", (0.0, False)),
])
def test_open_scorer(prediction, gold, expected):
    assert score_open(prediction, gold) == expected


def test_qwen_layout_puts_every_image_first_and_uses_qwens_prompt(tmp_path):
    """mmmu_val_qwen: as QwenLM/Qwen3-VL evaluation/mmmu/run_mmmu.py builds it."""
    from eval.tasks import get_task

    task = get_task("mmmu_val_qwen")
    mc, open_q = sorted(task.load(spec(mmmu_folder(tmp_path / "mmmu"))), key=lambda s: s.id)
    assert colors(mc) == [MMMU_COLORS["green"], MMMU_COLORS["red"]]  # column order, not tag order
    assert mc.prompt_messages()[0]["content"] == [
        {"type": "image"}, {"type": "image"},
        {"type": "text", "text": "Question: <image 2> Which colour is the square in <image 1>? "
                                 "Compare <image 2>.\nOptions:\nA. Red\nB. Green\nC. Blue\n"
                                 "Please select the correct answer from the options above."}]
    assert open_q.prompt_messages()[0]["content"][-1]["text"].startswith("Question: How many squares")
    assert task.score("The answer is B", mc) == (1.0, True)
