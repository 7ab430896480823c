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


def get_task(name: str, spec=None):
    """The registered task, configured by its TaskSpec's task-specific settings (``judge``)."""
    if name not in TASKS:
        raise KeyError(f"unknown eval task {name!r}; available: {sorted(TASKS)}")
    task = TASKS[name]
    if spec is not None and spec.judge is not None:
        if not hasattr(task, "with_judge"):
            raise ValueError(f"tasks.{name}.judge: this task scores without a judge; remove the key "
                             f"(tasks that take one: {sorted(n for n, t in TASKS.items() if hasattr(t, 'with_judge'))})")
        task = task.with_judge(spec.judge)
    return task
