"""lmms-eval integration: ``lmms-eval --model qwen3vl_tune`` (our entry point) runs an lmms-eval
task offline on a local fixture, replies exactly as ``python -m eval`` does on the same
checkpoint and prompts, and survives a sample whose image cannot be decoded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.config import CheckpointSpec, EvalConfig, GenerationConfig, TaskSpec
from eval.lmms_model import MODEL_ID, clean_reply, image_parts
from eval.runner import evaluate
from tests.helpers.benchmark_data import DOCVQA_PARQUET, docvqa_folder
from tests.helpers.files import png

ROOT = Path(__file__).resolve().parents[1]
LMMS_EVAL = Path(sys.executable).with_name("lmms-eval")
# DocVQA's published columns; the last page's bytes are not an image.
DOCVQA_ROWS = {
    "questionId": ["101", "102", "103", "104"],
    "question": ["What is the date?", "Who signed the letter?", "What is the total?",
                 "What is the title?"],
    "question_types": [["form"], ["layout"], ["table/list"], ["layout"]],
    "image": [png((96, 128)), png((128, 96)), png((64, 64)), {"bytes": b"not a png", "path": None}],
    "docId": [1, 2, 3, 4],
    "answers": [["1 May"], ["J. Doe"], ["42"], ["Report"]],
    "data_split": ["val"] * 4}


def docvqa_task(tasks: Path, parquet: Path) -> None:
    """A task yaml under --include_path that reads the local parquet with lmms-eval's own
    DocVQA prompt and visual functions and its ANLS metric."""
    tasks.mkdir(parents=True)
    (tasks / "utils.py").write_text(
        "from lmms_eval.tasks.docvqa.utils import docvqa_doc_to_text, docvqa_doc_to_visual  # noqa\n")
    (tasks / "docvqa_val_local.yaml").write_text(f"""task: docvqa_val_local
dataset_path: parquet
dataset_kwargs:
  data_files:
    validation: {parquet}
test_split: validation
output_type: generate_until
doc_to_visual: !function utils.docvqa_doc_to_visual
doc_to_text: !function utils.docvqa_doc_to_text
doc_to_target: answers
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
metric_list:
  - metric: anls
    aggregation: mean
    higher_is_better: true
""")


def test_lmms_eval_cli_runs_a_task_on_our_checkpoint_like_our_harness(tiny, tmp_path):
    parquet = docvqa_folder(tmp_path, DOCVQA_ROWS) / DOCVQA_PARQUET
    docvqa_task(tmp_path / "tasks", parquet)
    out = tmp_path / "lmms_out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run(
        [str(LMMS_EVAL), "--model", MODEL_ID, "--model_args", f"pretrained={tiny['dense']}",
         "--tasks", "docvqa_val_local", "--include_path", str(tmp_path / "tasks"),
         "--batch_size", "2", "--device", "cpu", "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results,) = out.rglob("*_results.json")
    score = json.loads(results.read_text())["results"]["docvqa_val_local"]["anls,none"]
    assert 0.0 <= score <= 1.0
    (samples,) = out.rglob("*_samples_docvqa_val_local.jsonl")
    replies = {r["doc_id"]: r["filtered_resps"] for r in map(json.loads, samples.read_text().splitlines())}
    flat = {k: v[0] if isinstance(v, list) else v for k, v in replies.items()}
    assert sorted(flat) == [0, 1, 2, 3]
    assert flat[3] == ""  # the undecodable page: an empty reply, the run went on
    assert "doc 3 failed" in proc.stdout + proc.stderr

    # Our harness on the same checkpoint, data and prompt (greedy, 8 new tokens).
    cfg = EvalConfig(output_dir=str(tmp_path / "ours"), progress=False,
                     checkpoints=[CheckpointSpec(name="tiny", path=str(tiny["dense"]))],
                     tasks=[TaskSpec(name="docvqa_val", data=str(parquet.parent))],
                     generation=GenerationConfig(batch_size=2, max_new_tokens=8))
    evaluate(cfg)
    ours = {r["id"]: r for r in map(json.loads, (tmp_path / "ours/predictions/tiny/docvqa_val.jsonl")
                                    .read_text().splitlines())}
    assert [flat[i] for i in range(3)] == [ours[q]["prediction"] for q in ("101", "102", "103")]
    assert "error" in ours["104"]


@pytest.mark.parametrize("context, images, parts, order", [
    # No placement in the text: images first (Qwen3-VL's evaluation style).
    ("Q?", ["a", "b"], [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}],
     ["a", "b"]),
    # One <image> per image: placed where they stand.
    ("x <image> y <image>", ["a", "b"],
     [{"type": "text", "text": "x "}, {"type": "image"}, {"type": "text", "text": " y "},
      {"type": "image"}], ["a", "b"]),
    # MMMU's numbered tags: the n-th smallest number is the n-th visual; a repeat stays text.
    ("<image 2> vs <image 1>, again <image 2>", ["one", "two"],
     [{"type": "image"}, {"type": "text", "text": " vs "}, {"type": "image"},
      {"type": "text", "text": ", again <image 2>"}], ["two", "one"]),
    # Placeholders that do not match the images: dropped, images first.
    ("<image> Q?", ["a", "b"], [{"type": "image"}, {"type": "image"},
                                {"type": "text", "text": " Q?"}], ["a", "b"]),
])
def test_images_are_placed_as_the_task_text_says(context, images, parts, order):
    assert image_parts(context, images) == (parts, order)


def test_replies_lose_reasoning_and_stop_at_until():
    assert clean_reply("<think>hmm</think>\n\nB. cat\n\nnext", ["\n\n"]) == "B. cat"
    assert clean_reply("hmm</think>B", None, opens_thinking=True) == "B"
    assert clean_reply("<think>still going", None) is None  # unfinished: no answer
    assert clean_reply("still going", None, opens_thinking=True) is None
    assert clean_reply("<think>x</think>A", "Q:", strip=False) == "<think>x</think>A"
