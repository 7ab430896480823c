"""Benchmark registry: one folder per benchmark family, loader + prompt + scorer side by side.

A task is an object with ``name``, ``metric``, ``load(spec) -> list[Sample]`` and
``score(prediction, sample) -> (score, parsed)``.
"""

from __future__ import annotations

from eval.tasks.docvqa import DOCVQA_TASKS
from eval.tasks.grounding import GROUNDING_TASKS
from eval.tasks.mathvista import MATHVISTA_TASKS
from eval.tasks.mmmu import MMMU_TASKS
from eval.tasks.synthetic import SYNTHETIC_TASKS

TASKS = {task.name: task for task in SYNTHETIC_TASKS + MMMU_TASKS + MATHVISTA_TASKS + DOCVQA_TASKS
                             + GROUNDING_TASKS}


def get_task(name: str):
    if name not in TASKS:
        raise KeyError(f"unknown eval task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name]
