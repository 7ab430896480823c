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
    # An OpenAI-compatible answer extractor, for tasks that take one (MathVista):
    # {base_url, model, api_key_env, timeout_s, max_tokens}. Scoring only: not in the cache key.
    judge: dict | None = None

    def __post_init__(self):
        from eval.tasks import TASKS, get_task

        if self.name not in TASKS:
            raise ValueError(f"tasks: unknown task {self.name!r}; available: {sorted(TASKS)}")
        get_task(self.name, self)  # the task checks its own settings (e.g. judge keys)


@dataclass
class GenerationConfig:
    """Greedy by default (benchmarks are scored on one deterministic answer). The sampling keys
    apply only with ``do_sample: true``; all of them are part of the prediction cache key."""

    batch_size: int = 16
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0
    seed: int = 0  # sampling seed (per sample under vLLM, per batch under hf)

    def __post_init__(self):
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise ValueError("generation.batch_size and generation.max_new_tokens must be > 0")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 with do_sample: true "
                             "(for greedy decoding set do_sample: false)")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("generation: top_p must be in (0, 1], top_k >= 0, repetition_penalty > 0")

    def generate_kwargs(self) -> dict:
        """Arguments for transformers' ``generate``."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                  "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        return kwargs


@dataclass
class EvalConfig:
    output_dir: str = "outputs/eval"
    checkpoints: list[CheckpointSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    vision: VisionBudget = field(default_factory=VisionBudget)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # hf: transformers generate (CPU or GPU, under torchrun data-parallel); vllm: needs vLLM
    # and a GPU. ``vllm`` holds extra vllm.LLM(...) engine arguments (gpu_memory_utilization,
    # tensor_parallel_size, max_model_len, ...).
    backend: Literal["hf", "vllm"] = "hf"
    vllm: dict = field(default_factory=dict)
    # Over all results found in output_dir/results: <this>.md, .json (one schema), .html (sortable
    # table, deltas vs leaderboard_base, per-benchmark bars) and .png (grouped bar chart).
    leaderboard: str | None = None
    leaderboard_base: str | None = None  # a checkpoint name: deltas against it in md and html
    progress: bool = True

    def __post_init__(self):
        if not self.checkpoints or not self.tasks:
            raise ValueError("eval config needs at least one entry in checkpoints and in tasks")
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoints: names must be unique, got {names}")
        for spec in self.tasks:
            self.vision.with_overrides(spec.vision, f"tasks.{spec.name}.vision")  # checks keys
