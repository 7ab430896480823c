"""MathVista (testmini, 1000 questions): math reasoning over figures, charts and photos.

Loader: the published Hugging Face layout (``AI4Math/MathVista``, split ``testmini``: columns
``pid, question, image`` (a path string), ``decoded_image`` (the image), ``choices, unit,
precision, answer, question_type, answer_type, metadata, query``), read through the training
side's ``hf_dataset`` source, so a hub id, a downloaded parquet folder
(``data/testmini-*.parquet``) and a
``save_to_disk`` copy all work and images stay lazy ``hfrow://`` references. Rows whose types or
choices make them unscorable fail the load naming the file, row and pid.

Prompt: the dataset's own ``query`` (the question with its hint and choices, as the benchmark
publishes it) by default; ``TaskSpec.prompt`` overrides it with a template over the row's
columns, e.g. ``"{question}\\nAnswer with a number."``.

Score: accuracy with rule-based extraction (``extract.py``); responses with truncated thinking or
no extractable answer are unparsed and score 0. An LLM judge (``judge.py``) is asked only when
the task's ``judge:`` in the eval config sets one and the rules found nothing. ``breakdown``
gives per-task and per-skill groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from data.config import SourceConfig
from data.samples import BadSampleLog, DataError
from data.sources import load as load_source
from eval.metrics import strip_thinking
from eval.tasks.mathvista.extract import rule_score
from eval.tasks.mathvista.judge import Judge

PROMPT = "{query}"
COLUMNS = {"image": "decoded_image", "question": "question", "answer": "answer", "id": "pid"}
QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("text", "integer", "float", "list")


def check_row(sample) -> None:
    """Raise DataError naming the row when it cannot be scored as published."""
    meta, where = sample.meta, f"{sample.source}: row {sample.index} (pid {sample.id})"
    missing = [c for c in ("question_type", "answer_type", "choices", "precision", "unit")
               if c not in meta]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r}; expected the AI4Math/MathVista "
                        f"layout (pid, question, decoded_image, choices, unit, precision, "
                        f"answer, question_type, answer_type, metadata, query)")
    if meta["question_type"] not in QUESTION_TYPES or meta["answer_type"] not in ANSWER_TYPES:
        raise DataError(f"{where}: question_type {meta['question_type']!r} / answer_type "
                        f"{meta['answer_type']!r}; expected one of {QUESTION_TYPES} / {ANSWER_TYPES}")
    if meta["question_type"] == "multi_choice" and not meta["choices"]:
        raise DataError(f"{where}: a multi_choice question without choices; fix the row")
    precision = meta["precision"]
    if precision is not None and (precision < 0 or float(precision) != int(precision)):
        raise DataError(f"{where}: precision {precision!r} is not a whole number of decimals")


@dataclass(frozen=True)
class MathVistaTask:
    name: str = "mathvista_testmini"
    metric: str = "accuracy"
    split: str = "testmini"
    benchmark: str = "MathVista"
    judge: Judge | None = None  # None: rule-based extraction only

    def with_judge(self, settings: dict) -> "MathVistaTask":
        """This task with the judge a config's ``tasks[].judge`` mapping describes."""
        try:
            return dataclasses.replace(self, judge=Judge(**settings))
        except TypeError as e:
            fields = [f.name for f in dataclasses.fields(Judge)]
            raise ValueError(f"tasks.{self.name}.judge: {e}; keys: {', '.join(fields)} "
                             f"(base_url and model are required)") from None
        except ValueError as e:  # the judge's own check, which names its key
            raise ValueError(f"tasks.{self.name}.{e}") from None

    def scoring_settings(self) -> dict | None:
        """What can change a score without changing the prediction: the judge's endpoint,
        model and reply length (not its key or timeout). The runner stores a hash of this with
        each score and rescores cached predictions when it differs."""
        if self.judge is None:
            return None
        return {"judge": {"base_url": self.judge.base_url, "model": self.judge.model,
                          "max_tokens": self.judge.max_tokens}}

    def load(self, spec):
        split = spec.split or self.split
        source = SourceConfig(path=spec.data, format="hf_dataset", name=self.name,
                              split=split, subset=spec.subset,
                              image_root=spec.image_root, prompt=spec.prompt or PROMPT,
                              columns=dict(COLUMNS))
        samples = load_source(source, BadSampleLog("error"))
        if not samples:
            raise ValueError(f"{spec.data}: no MathVista rows in split {source.split!r}")
        for sample in samples:
            check_row(sample)
        return samples

    def score(self, prediction: str, sample) -> tuple[float, bool]:
        text = strip_thinking(prediction)
        if "<think>" in text:  # thinking cut off by max_new_tokens: no answer was given
            return 0.0, False
        score, parsed = rule_score(text, sample.meta)
        if parsed or self.judge is None or not text:
            return score, parsed
        meta = sample.meta
        extracted = self.judge.extract(meta["question"], meta["choices"], text)
        return rule_score(extracted, meta) if extracted is not None else (0.0, False)

    def breakdown(self, sample) -> dict:
        metadata = sample.meta.get("metadata") or {}
        return {"task": metadata.get("task"), "skill": list(metadata.get("skills") or [])}


MATHVISTA_TASKS = [MathVistaTask()]
