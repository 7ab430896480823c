"""The synthetic corpus's eval split (see data/tools/synthetic.py), one task per kind.

Prompts are the ones stored with each sample (the generator writes Qwen-style instructions);
each kind is scored with the metric of its real counterpart (grounding also by its mean IoU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from data.sources import load_llava_json
from eval.metrics import anls, box_accuracy, exact_match, first_box_iou


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    kind: str  # the ``task`` field written by data/tools/synthetic.py
    metric: str
    benchmark: str = "synthetic"
    split: str = "eval"

    def load(self, spec):
        samples = [s for s in load_llava_json(spec.data, spec.image_root)
                   if s.meta.get("task") == self.kind]
        if not samples:
            raise ValueError(f"{spec.data}: no samples with task={self.kind!r} for {self.name}")
        return samples

    def score(self, prediction: str, sample) -> tuple[float, bool]:
        gold = sample.answer()
        if self.metric == "acc_iou50":
            return box_accuracy(prediction, json.loads(gold)[0]["bbox_2d"])
        if self.metric == "mean_iou":
            return first_box_iou(prediction, json.loads(gold)[0]["bbox_2d"])
        if self.metric == "anls":
            return anls(prediction, [gold]), True
        return exact_match(prediction, [gold]), True


SYNTHETIC_TASKS = [
    SyntheticTask("synthetic_vqa", "vqa", "exact_match"),
    SyntheticTask("synthetic_grounding", "grounding", "acc_iou50"),
    # The same items scored by the IoU itself: what GRPO's grounding reward raises once
    # Acc@IoU.5 is saturated (the RL demo, configs/demo/grpo.yaml).
    SyntheticTask("synthetic_grounding_iou", "grounding", "mean_iou"),
    # A second shape in the image; the RL demo's held-out prompts (data synth --tasks ...).
    SyntheticTask("synthetic_grounding_distractor", "grounding_distractor", "acc_iou50"),
    SyntheticTask("synthetic_doc", "doc", "anls"),
]
