"""Benchmark fixtures in their published layouts (the hub's file names, columns and features),
small enough to run through the eval harness with the tiny model: DocVQA, MMMU, MathVista,
RefCOCO and ScreenSpot-v2. The task tests load and score them; the end-to-end tests evaluate
them (tests/test_eval_benchmarks.py, tests/test_lmms_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.helpers.files import png

# --- DocVQA ----------------------------------------------------------------------------------

DOCVQA_PARQUET = "validation-00000-of-00001.parquet"
DOCVQA_ROWS = {
    "questionId": ["49153", "57349", "24580"],
    "question": ["What is the ‘actual’ value per 1000, during the year 1975?",
                 "What is the name of the company?", "Who is the memo addressed to?"],
    "question_types": [["figure/diagram"], ["layout"], ["form", "layout"]],
    "image": [png((96, 128)), png((128, 96)), png((64, 64))],
    "docId": [14465, 9211, 2201],
    "answers": [["0.28"], ["ITC Limited", "itc limited", "ITC"], ["Dr. Smith"]],
    "data_split": ["val", "val", "val"]}


def docvqa_folder(root: Path, rows: dict | None = None) -> Path:
    """lmms-lab/DocVQA, config DocVQA: ``root/DocVQA/validation-00000-of-00001.parquet`` with
    the published columns; ``rows``: the columns' values (default: three real questions)."""
    from datasets import Dataset, Features, Image as HFImage, List, Value

    features = Features({"questionId": Value("string"), "question": Value("string"),
                         "question_types": List(Value("string")), "image": HFImage(),
                         "docId": Value("int64"), "answers": List(Value("string")),
                         "data_split": Value("string")})
    folder = root / "DocVQA"
    folder.mkdir(parents=True)
    Dataset.from_dict(rows or DOCVQA_ROWS, features=features).to_parquet(str(folder / DOCVQA_PARQUET))
    return folder


# --- MMMU ------------------------------------------------------------------------------------

MMMU_COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def mmmu_png(color: str) -> dict:
    """An 8x8 image of one of ``MMMU_COLORS``: a loaded sample's pixels say which image it is."""
    return png((8, 8), MMMU_COLORS[color])


def mmmu_rows(subject_name: str, rows: list[dict]):
    """One subject config of MMMU/MMMU, validation split, with the published features."""
    from datasets import Dataset, Features, Image as HFImage, Value

    features = Features({"id": Value("string"), "question": Value("string"),
                         "options": Value("string"), "explanation": Value("string"),
                         **{f"image_{k}": HFImage() for k in range(1, 8)},
                         "img_type": Value("string"), "answer": Value("string"),
                         "topic_difficulty": Value("string"), "question_type": Value("string"),
                         "subfield": Value("string")})
    full = [{**{f"image_{k}": None for k in range(1, 8)}, "explanation": "", "img_type": "['Plots']",
             "topic_difficulty": "Easy", "subfield": "misc", **r} for r in rows]
    return Dataset.from_list(full, features=features)


def mmmu_subjects() -> dict:
    """Two subjects, one question each: a multiple-choice one whose tags name the images out of
    order (and repeat one), and an open one with two gold answers."""
    art = mmmu_rows("Art", [{
        "id": "validation_Art_1",
        "question": "<image 2> Which colour is the square in <image 1>? Compare <image 2>.",
        "options": "['Red', 'Green', 'Blue']", "answer": "B", "question_type": "multiple-choice",
        "image_1": mmmu_png("green"), "image_2": mmmu_png("red")}])
    theory = mmmu_rows("Art_Theory", [{
        "id": "validation_Art_Theory_1", "question": "How many squares are in <image 1>?",
        "options": "[]", "answer": "['1,200', '1200.0']", "question_type": "open",
        "image_1": mmmu_png("blue")}])
    return {"Art": art, "Art_Theory": theory}


def mmmu_folder(root: Path) -> Path:
    """The hub download's layout: ``root/<Subject>/validation-00000-of-00001.parquet``."""
    for name, ds in mmmu_subjects().items():
        (root / name).mkdir(parents=True)
        ds.to_parquet(str(root / name / "validation-00000-of-00001.parquet"))
    return root


# --- MathVista -------------------------------------------------------------------------------

MATHVISTA_HINT = "Hint: Please answer the question and provide the final answer at the end.\nQuestion: "
MATHVISTA_ROWS = [  # (pid, question, choices, unit, precision, answer, question_type, answer_type, task, skills)
    ("1", "Find x.", ["3", "4", "5", "6"], None, None, "5", "multi_choice", "text",
     "geometry problem solving", ["geometry reasoning", "algebraic reasoning"]),
    ("2", "How many bars are there?", None, None, None, "7", "free_form", "integer",
     "figure question answering", ["arithmetic reasoning"]),
    ("3", "What is the slope?", None, None, 1.0, "0.5", "free_form", "float",
     "figure question answering", ["algebraic reasoning"]),
    ("4", "What is the area?", None, "cm^2", 2.0, "12.57", "free_form", "float",
     "geometry problem solving", ["geometry reasoning"]),
    ("5", "List the values of the bars.", None, None, None, "[1, 2, 3]", "free_form", "list",
     "figure question answering", ["statistical reasoning"]),
]


def _mathvista_meta(task, skills):
    return {"category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school",
            "img_height": 64, "img_width": 96, "language": "english", "skills": skills,
            "source": "Geometry3K", "split": "testmini", "task": task}


def _mathvista_query(question, choices, qtype, atype, precision):
    if qtype == "multi_choice":
        tail = "Choices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        return f"{MATHVISTA_HINT}{question}\n{tail}"
    ask = {"integer": "an integer answer", "float": f"a floating-point number with {int(precision or 0)} decimal places",
           "list": "a Python list answer"}[atype]
    return f"{MATHVISTA_HINT}Requires {ask}.\n{question}"


def mathvista_dataset(rows=MATHVISTA_ROWS):
    """AI4Math/MathVista testmini, exactly the published features."""
    from datasets import Dataset, Features, Image as HFImage, List, Value

    features = Features({
        "pid": Value("string"), "question": Value("string"), "image": Value("string"),
        "decoded_image": HFImage(), "choices": List(Value("string")), "unit": Value("string"),
        "precision": Value("float64"), "answer": Value("string"), "question_type": Value("string"),
        "answer_type": Value("string"),
        "metadata": {"category": Value("string"), "context": Value("string"),
                     "grade": Value("string"), "img_height": Value("int64"),
                     "img_width": Value("int64"), "language": Value("string"),
                     "skills": List(Value("string")), "source": Value("string"),
                     "split": Value("string"), "task": Value("string")},
        "query": Value("string")})
    cols = {k: [] for k in features}
    for pid, q, choices, unit, precision, answer, qtype, atype, task, skills in rows:
        for k, v in (("pid", pid), ("question", q), ("image", f"images/{pid}.jpg"),
                     ("decoded_image", png((96, 64))), ("choices", choices), ("unit", unit),
                     ("precision", precision), ("answer", answer), ("question_type", qtype),
                     ("answer_type", atype), ("metadata", _mathvista_meta(task, skills)),
                     ("query", _mathvista_query(q, choices, qtype, atype, precision))):
            cols[k].append(v)
    return Dataset.from_dict(cols, features=features)


def mathvista_folder(root: Path, rows=MATHVISTA_ROWS) -> Path:
    """``root/MathVista/data/testmini-00000-of-00001.parquet``; returns ``root/MathVista``."""
    folder = root / "MathVista" / "data"
    folder.mkdir(parents=True)
    mathvista_dataset(rows).to_parquet(str(folder / "testmini-00000-of-00001.parquet"))
    return folder.parent


# --- RefCOCO and ScreenSpot ------------------------------------------------------------------

def refcoco_folder(root: Path) -> Path:
    """lmms-lab/RefCOCO testA: parquet shards plus the card naming the splits; one question
    with two referring expressions for the box [40, 20, 100, 160] (x, y, w, h) of a 400x200
    image."""
    from datasets import Dataset, Features, Image as HFImage, List, Value

    features = Features({"question_id": Value("string"), "image": HFImage(),
                         "question": Value("string"), "answer": List(Value("string")),
                         "segmentation": List(Value("float32")), "bbox": List(Value("float32")),
                         "iscrowd": Value("int8"), "file_name": Value("string")})
    rows = {"question_id": ["q7"], "image": [png((400, 200))], "question": ["caption it"],
            "answer": [["man on the left", "left guy"]], "segmentation": [[0.0] * 8],
            "bbox": [[40, 20, 100, 160]], "iscrowd": [0], "file_name": ["COCO_1.jpg"]}
    folder = root / "RefCOCO"
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(folder / "data/testA-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                      "  - split: testA\n    path: data/testA-*\n---\n")
    return folder


def screenspot_file(folder: Path) -> Path:
    """ScreenSpot-v2's layout: one JSON list per platform beside the screenshots; one "Sign in"
    element at [600, 100, 200, 50] (x, y, w, h) of a 1000x500 screenshot."""
    Image.new("RGB", (1000, 500), "white").save(folder / "web_3.png")
    records = [{"img_filename": "web_3.png", "bbox": [600, 100, 200, 50], "instruction": "Sign in",
                "data_type": "text", "data_source": "shop"}]
    (folder / "screenspot_web.json").write_text(json.dumps(records))
    return folder / "screenspot_web.json"
