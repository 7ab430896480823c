"""DocVQA (validation): a document image and a question, scored by ANLS against every gold answer.

Loader: the published Hugging Face layout (``lmms-lab/DocVQA``, config ``DocVQA``: columns
``questionId, question, question_types, image, docId, answers``), read through the training
side's ``hf_dataset`` source, so a hub id, a downloaded parquet folder and a ``save_to_disk``
copy all work and images stay lazy. A row without an image or answers fails the load naming the
file and row: a benchmark must not shrink silently.

Prompt: Qwen's short-answer instruction for document VQA (``PROMPT``; a ``{question}`` template).
Score: ANLS (Average Normalised Levenshtein Similarity) with the 0.5 threshold, the best over
all gold answers; an empty prediction counts as unparsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.config import SourceConfig
from data.samples import BadSampleLog
from data.sources import load as load_source
from eval.metrics import anls

PROMPT = "{question}\nAnswer the question using a single word or phrase."
COLUMNS = {"image": "image", "question": "question", "answer": "answers", "id": "questionId"}


@dataclass(frozen=True)
class DocVQATask:
    name: str = "docvqa_val"
    metric: str = "anls"
    split: str = "validation"
    benchmark: str = "DocVQA"

    def load(self, spec):
        source = SourceConfig(path=spec.data, format="hf_dataset", name=self.name,
                              split=spec.split or self.split, subset=spec.subset,
                              image_root=spec.image_root, prompt=spec.prompt or PROMPT,
                              columns=dict(COLUMNS))
        samples = load_source(source, BadSampleLog("error"))
        if not samples:
            raise ValueError(f"{spec.data}: no DocVQA rows in split {source.split!r}")
        return samples

    def score(self, prediction: str, sample) -> tuple[float, bool]:
        return anls(prediction, sample.meta["answers"]), bool(prediction.strip())

    def breakdown(self, sample) -> dict:
        return {"question_type": list(sample.meta.get("question_types") or [])}


DOCVQA_TASKS = [DocVQATask()]
