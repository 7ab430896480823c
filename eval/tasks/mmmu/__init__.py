"""MMMU (validation, 900 questions over 30 subjects): college-level multi-image questions.

Tasks: ``mmmu_val`` (split ``validation``) and ``mmmu_dev`` (split ``dev``, 5 questions a
subject, the few-shot split); ``mmmu_val_qwen`` / ``mmmu_dev_qwen`` the same questions with the
prompts and image layout of Qwen's own MMMU script (``QWEN_MC_PROMPT``; not Qwen's scoring,
which rewrites open questions as multiple choice and asks a judge model). Loader: the published Hugging Face layout (``MMMU/MMMU``, one
config per subject, split ``validation``; columns ``id, question, options, explanation, image_1..image_7, img_type,
answer, topic_difficulty, question_type, subfield``; ``options`` is a string holding a Python
list; ids are ``validation_<Subject>_<n>``). ``TaskSpec.data`` is a local parquet file or folder
(the hub download, ``<Subject>/validation-*.parquet``, reads as one split), a ``save_to_disk``
folder, or the hub id (then every subject config is read, or only ``TaskSpec.subset``). Reading
goes through ``data.sources.hf_dataset.open_split``, so images stay lazy ``hfrow://`` references.

Prompt: Qwen3-VL's evaluation style. The text is built with its ``<image n>`` tags, then split at
them: each image goes where its tag first stands (in the question or in an option); a tag that
repeats an image already shown stays as the text "<image n>" (the image is not sent twice).
Images of the row that no tag names go before the text, in column order. A tag naming an empty
image column fails the load, naming the row.

Templates (``MC_PROMPT``, ``OPEN_PROMPT``) take ``{question}``, ``{options}`` (the lines
"A. ...", empty for open questions) and ``{question_type}``. Override both with
``TaskSpec.prompt`` (one template for every question), or each with a task of its own:
``MMMUTask(name="mmmu_val_cot", mc_prompt=..., open_prompt=...)`` added to the registry.

Score: ``scoring.py`` (no random guess when nothing parses). ``subject(sample)`` and
``breakdown`` give per-subject accuracy.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from data.config import SourceConfig
from data.sources.chat import tagged_parts
from data.sources.hf_dataset import open_split
from data.sources.records import template_fields
from data.samples import DataError, Sample
from eval.tasks.mmmu.scoring import LETTERS, gold_list, score_choice, score_open

MC_PROMPT = ("Question: {question}\nOptions:\n{options}\n"
             "Answer with the option's letter from the given choices directly.")
OPEN_PROMPT = "Question: {question}\nAnswer the question using a single word or phrase."
# Qwen's own MMMU script (QwenLM/Qwen3-VL evaluation/mmmu/run_mmmu.py, build_mmmu_prompt): every
# image first, in column order, then "Question: ...", the "A. ..." option lines and this line
# ("...above. \n" with the trailing space and newline stripped); open questions the question alone.
QWEN_MC_PROMPT = ("Question: {question}\nOptions:\n{options}\n"
                  "Please select the correct answer from the options above.")
QWEN_OPEN_PROMPT = "Question: {question}"
PLACEHOLDERS = {"question", "options", "question_type"}
N_IMAGES = 7
SUBJECTS = [
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory",
    "Basic_Medical_Science", "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science",
    "Design", "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power",
    "Finance", "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math",
    "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology", "Public_Health",
    "Sociology",
]


def subject(sample) -> str:
    """``validation_Art_Theory_12`` -> ``Art_Theory`` (subjects contain underscores)."""
    return sample.meta["subject"]


def subject_of_id(sample_id: str) -> str:
    parts = sample_id.split("_")
    if len(parts) < 3:
        raise ValueError(f"id {sample_id!r} is not <split>_<Subject>_<n>")
    return "_".join(parts[1:-1])


def parse_options(value) -> list[str]:
    if isinstance(value, list):
        return [str(o) for o in value]
    try:
        options = ast.literal_eval(value) if value and value.strip() else []
    except (ValueError, SyntaxError):
        raise ValueError(f"options {str(value)[:80]!r} is not a Python list literal") from None
    if not isinstance(options, list):
        raise ValueError(f"options {str(value)[:80]!r} is not a list")
    return [str(o) for o in options]


@dataclass(frozen=True)
class MMMUTask:
    name: str = "mmmu_val"
    metric: str = "accuracy"
    split: str = "validation"
    benchmark: str = "MMMU"
    mc_prompt: str = MC_PROMPT
    open_prompt: str = OPEN_PROMPT
    images_first: bool = False  # True: Qwen's layout, every image before the text, tags as text

    def load(self, spec) -> list[Sample]:
        templates = (spec.prompt, spec.prompt) if spec.prompt else (self.mc_prompt, self.open_prompt)
        for template in templates:
            unknown = template_fields(template) - PLACEHOLDERS
            if unknown:
                raise DataError(f"task {self.name}: prompt placeholder {{{sorted(unknown)[0]}}} is "
                                f"not one of {{question}}, {{options}}, {{question_type}}")
        split_name = spec.split or self.split
        local = spec.data.startswith((".", "/", "~")) or _exists(spec.data)
        subsets = [spec.subset] if spec.subset or local else SUBJECTS
        samples = []
        for subset in subsets:
            cfg = SourceConfig(path=spec.data, format="hf_dataset", name=self.name,
                               split=split_name, subset=subset, image_root=spec.image_root)
            samples += self._read(open_split(cfg), templates, len(samples))
        if not samples:
            raise DataError(f"{spec.data}: no MMMU rows in split {split_name!r}")
        return samples

    def _read(self, split, templates, offset: int) -> list[Sample]:
        missing = {"id", "question", "options", "answer", "question_type"} - set(split.columns)
        if missing:
            raise DataError(f"{split.where}: not the MMMU layout, missing column(s) "
                            f"{', '.join(sorted(missing))}; columns: {', '.join(split.columns)}")
        image_cols = [f"image_{k}" for k in range(1, N_IMAGES + 1) if f"image_{k}" in split.columns]
        refs = {c: split.image_refs(c) for c in image_cols}
        rows = split.text_rows([c for c in split.columns if c not in image_cols])
        samples = []
        for index, row in enumerate(rows):
            images = {int(c.split("_")[1]): refs[c][index][0] for c in image_cols
                      if refs[c][index]}
            try:
                samples.append(self._sample(row, images, templates, split.where, offset + index))
            except ValueError as e:
                raise DataError(f"{split.where}: row {index} (id {row.get('id')}): {e}. Fix the "
                                f"row or drop it from the local copy.") from None
        return samples

    def _sample(self, row, images: dict[int, str], templates, where: str, index: int) -> Sample:
        sample_id = str(row["id"])
        options = parse_options(row["options"])
        multiple_choice = row["question_type"] == "multiple-choice"
        golds = gold_list(row["answer"])
        if multiple_choice:
            if not options or len(options) > len(LETTERS):
                raise ValueError(f"a multiple-choice question needs 1 to {len(LETTERS)} options, "
                                 f"got {len(options)}")
            if golds[0].strip().upper() not in LETTERS[: len(options)]:
                raise ValueError(f"answer {row['answer']!r} is not one of the option letters")
        option_lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        template = templates[0] if multiple_choice else templates[1]
        text = template.format(question=row["question"], options=option_lines if multiple_choice
                               else "", question_type=row["question_type"])
        content, ordered = tagged_parts(text, images)  # also checks that each tag has its image
        if self.images_first:
            ordered = [images[n] for n in sorted(images)]
            content = [{"type": "image"} for _ in ordered] + [{"type": "text", "text": text}]
        meta = {k: v for k, v in row.items()}
        meta.update(subject=subject_of_id(sample_id), options=options, answers=golds)
        return Sample(id=sample_id, source=where, index=index, meta=meta, images=ordered, messages=[
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": golds[0]}]}])

    def score(self, prediction: str, sample) -> tuple[float, bool]:
        if sample.meta["question_type"] == "multiple-choice":
            return score_choice(prediction, sample.meta["options"], sample.meta["answers"][0])
        return score_open(prediction, sample.meta["answers"])

    def breakdown(self, sample) -> dict:
        return {"subject": subject(sample), "question_type": sample.meta.get("question_type")}


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).expanduser().exists()


MMMU_TASKS = [
    MMMUTask(), MMMUTask(name="mmmu_dev", split="dev"),
    # Qwen's prompts and image layout (use with preset: qwen3vl-instruct / qwen3vl-thinking).
    *(MMMUTask(name=f"mmmu_{short}_qwen", split=split, mc_prompt=QWEN_MC_PROMPT,
               open_prompt=QWEN_OPEN_PROMPT, images_first=True)
      for short, split in (("val", "validation"), ("dev", "dev"))),
]
