"""DocVQA: the published column layout loads, ANLS scores against every gold answer, and the
harness runs it end to end with per-question-type breakdowns."""

from __future__ import annotations

import json

import pytest

from data.configio import load_config
from eval.config import EvalConfig, TaskSpec
from eval.tasks import get_task
from tests.helpers.benchmark_data import docvqa_folder


def test_loads_the_published_layout_with_the_short_answer_prompt(tmp_path):
    task = get_task("docvqa_val")
    samples = task.load(TaskSpec(name="docvqa_val", data=str(docvqa_folder(tmp_path))))
    assert [s.id for s in samples] == ["49153", "57349", "24580"]
    text = samples[1].messages[0]["content"][-1]["text"]
    assert text == "What is the name of the company?\nAnswer the question using a single word or phrase."
    assert samples[1].meta["answers"] == ["ITC Limited", "itc limited", "ITC"]
    assert task.breakdown(samples[2]) == {"question_type": ["form", "layout"]}


@pytest.mark.parametrize("prediction, expected", [
    ("ITC Limited", 1.0),
    ("itc  limited.", 1 - 1 / 12),          # case and spaces normalised; the full stop costs 1 edit
    ("ITC", 1.0),                            # any gold answer counts
    ("ITC Ltd", 1 - 4 / 11),                 # best over golds: "ITC Limited" at distance 4 of 11
    ("Hindustan Lever", 0.0),                # below the 0.5 threshold
    ("", 0.0),
])
def test_anls_against_all_gold_answers(tmp_path, prediction, expected):
    task = get_task("docvqa_val")
    sample = task.load(TaskSpec(name="docvqa_val", data=str(docvqa_folder(tmp_path))))[1]
    score, parsed = task.score(prediction, sample)
    assert score == pytest.approx(expected) and parsed == bool(prediction)


def test_end_to_end_with_breakdowns(tmp_path, tiny):
    from eval.runner import evaluate

    folder = docvqa_folder(tmp_path)
    cfg = load_config(EvalConfig, None, [
        f"checkpoints=[{{name: base, path: {tiny['dense']}}}]", f"output_dir={tmp_path / 'out'}",
        f"tasks=[{{name: docvqa_val, data: {folder}}}]", "progress=false",
        "generation.max_new_tokens=4"])
    row = evaluate(cfg)[0]
    assert row["task"] == "docvqa_val" and row["metric"] == "anls" and row["n"] == 3
    assert set(row["breakdown"]) == {"question_type/figure/diagram", "question_type/layout",
                                     "question_type/form"}
    assert row["breakdown"]["question_type/layout"]["n"] == 2
    saved = json.loads((tmp_path / "out/results/base.json").read_text())
    assert saved[0]["breakdown"] == row["breakdown"]


def test_a_single_parquet_file_loads(tmp_path):
    parquet = next(docvqa_folder(tmp_path).glob("*.parquet"))
    samples = get_task("docvqa_val").load(TaskSpec(name="docvqa_val", data=str(parquet)))
    assert [s.id for s in samples] == ["49153", "57349", "24580"]
