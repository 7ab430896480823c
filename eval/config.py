"""Eval config: which checkpoints, which benchmark tasks, how to generate, where results go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data.config import VisionBudget


@dataclass
class CheckpointSpec:
    name: str = ""  # the leaderboard's row label, e.g. "base"
    path: str = ""  # a full checkpoint (hub id or folder)
    adapter: str | None = None  # a peft adapter folder applied on top of ``path``

    def __post_init__(self):
        if not self.name or not self.path:
            raise ValueError("each entry of checkpoints needs a name and a path")


@dataclass
class TaskSpec:
    name: str = ""  # a registered task, e.g. synthetic_vqa
    data: str = ""  # local data for the task
    image_root: str | None = None
    split: str | None = None  # the dataset split, where the task reads a Hugging Face dataset
    subset: str | None = None  # the dataset config (e.g. DocVQA), likewise
    prompt: str | None = None  # the task's prompt template, where it takes one ({question})
    limit: int | None = None  # evaluate only the first N samples
    vision: dict = field(default_factory=dict)  # this task's overrides of the vision.* budget

    def __post_init__(self):
        from eval.tasks import TASKS

        if self.name not in TASKS:
            raise ValueError(f"tasks: unknown task {self.name!r}; available: {sorted(TASKS)}")


@dataclass
class GenerationConfig:
    batch_size: int = 16
    max_new_tokens: int = 64
    do_sample: bool = False

    def __post_init__(self):
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise ValueError("generation.batch_size and generation.max_new_tokens must be > 0")


@dataclass
class EvalConfig:
    output_dir: str = "outputs/eval"
    checkpoints: list[CheckpointSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    vision: VisionBudget = field(default_factory=VisionBudget)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    leaderboard: str | None = None  # write <this>.md and <this>.json over all results found
    progress: bool = True

    def __post_init__(self):
        if not self.checkpoints or not self.tasks:
            raise ValueError("eval config needs at least one entry in checkpoints and in tasks")
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoints: names must be unique, got {names}")
        for spec in self.tasks:
            self.vision.with_overrides(spec.vision, f"tasks.{spec.name}.vision")  # checks keys
