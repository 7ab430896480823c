"""Eval config: which checkpoints, which benchmark tasks, how to generate, where results go."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from data.config import VisionBudget

# A checkpoint name becomes a file and folder name (results/<name>.json, predictions/<name>/),
# so it may not climb out of output_dir or hide in it.
NAME = re.compile(r"[A-Za-z0-9._\-+@=]+")
NAME_RULE = "letters, digits and . _ - + @ = only (no path separators or spaces; not '.' or '..')"


def check_name(name: str, key: str) -> None:
    """Raise a ValueError naming ``key`` unless ``name`` is safe as a file name."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{key} {name!r}: a checkpoint name becomes a file name under output_dir "
                         f"(results/<name>.json, predictions/<name>/); use {NAME_RULE}")


@dataclass
class CheckpointSpec:
    name: str = field(default="", metadata={
        "help": "the checkpoint's row label in the leaderboard and its file name under "
                "output_dir, e.g. base (unique; required; letters, digits and . _ - + @ =)"})
    path: str = field(default="", metadata={
        "help": "a full checkpoint: hub id or folder (required)"})
    adapter: str | None = field(default=None, metadata={
        "help": "a peft adapter folder applied on top of path; null: none"})

    def __post_init__(self):
        if not self.name or not self.path:
            raise ValueError("each entry of checkpoints needs a name and a path")


@dataclass
class TaskSpec:
    name: str = field(default="", metadata={
        "help": "a registered task (eval/tasks/), e.g. synthetic_vqa (required)"})
    data: str = field(default="", metadata={
        "help": "the task's data: a local file or folder, or a hub id where the task reads a "
                "Hugging Face dataset"})
    image_root: str | None = field(default=None, metadata={
        "help": "folder that relative media paths resolve against; default: the data's folder"})
    split: str | None = field(default=None, metadata={
        "help": "the dataset split, where the task reads a Hugging Face dataset; null: the "
                "task's default"})
    subset: str | None = field(default=None, metadata={
        "help": "the dataset config (e.g. DocVQA), likewise"})
    prompt: str | None = field(default=None, metadata={
        "help": "the task's prompt template, where it takes one ({question}); null: the "
                "task's default"})
    limit: int | None = field(default=None, metadata={
        "help": "evaluate only the first N samples; null: all"})
    vision: dict = field(default_factory=dict, metadata={
        "help": "this task's overrides of the vision.* budget keys, e.g. {max_pixels: 1048576}"})
    # Scoring only, so not in the prediction cache key.
    judge: dict | None = field(default=None, metadata={
        "help": "an OpenAI-compatible answer extractor, for tasks that take one (MathVista): "
                "{base_url, model, api_key_env, timeout_s, max_tokens}"})

    def __post_init__(self):
        from eval.tasks import TASKS, get_task

        if self.name not in TASKS:
            raise ValueError(f"tasks: unknown task {self.name!r}; available: {sorted(TASKS)}")
        get_task(self.name, self)  # the task checks its own settings (e.g. judge keys)


@dataclass
class GenerationConfig:
    """Greedy by default (benchmarks are scored on one deterministic answer). The sampling keys
    apply only with ``do_sample: true``; all of them are part of the prediction cache key."""

    batch_size: int = field(default=16, metadata={
        "help": "samples per generate call (per process)"})
    max_new_tokens: int = field(default=64, metadata={
        "help": "most tokens generated per answer"})
    do_sample: bool = field(default=False, metadata={
        "help": "sample (temperature, top_p, top_k, seed) instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature (> 0), with do_sample"})
    top_p: float = field(default=1.0, metadata={
        "help": "nucleus sampling: keep the smallest set of tokens with this much probability, "
                "in (0, 1]; 1: off"})
    top_k: int = field(default=0, metadata={
        "help": "keep only the k most likely tokens; 0: no top-k cut"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "penalty on tokens already generated (> 0; 1: none); applies to greedy "
                "decoding too"})
    presence_penalty: float = field(default=0.0, metadata={
        "help": "subtracted once from the logit of every token already generated (vLLM's "
                "definition; prompt tokens not counted), with do_sample; 0: none"})
    seed: int = field(default=0, metadata={
        "help": "sampling seed (per sample under vLLM, per batch under hf)"})

    def __post_init__(self):
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise ValueError("generation.batch_size and generation.max_new_tokens must be > 0")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 with do_sample: true "
                             "(for greedy decoding set do_sample: false)")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("generation: top_p must be in (0, 1], top_k >= 0, repetition_penalty > 0")
        if not -2 <= self.presence_penalty <= 2:
            raise ValueError(f"generation.presence_penalty {self.presence_penalty}: must be in "
                             f"[-2, 2] (vLLM's range), e.g. 1.5")

    def generate_kwargs(self) -> dict:
        """Arguments for transformers' ``generate``."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                  "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


@dataclass
class EvalConfig:
    output_dir: str = field(default="outputs/eval", metadata={
        "help": "predictions (cached), results/<checkpoint>.json and the leaderboard go here"})
    checkpoints: list[CheckpointSpec] = field(default_factory=list, metadata={
        "help": "the checkpoints to score (at least one)"})
    tasks: list[TaskSpec] = field(default_factory=list, metadata={
        "help": "the benchmark tasks to score them on (at least one)"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={
        "help": "how answers are generated"})
    vision: VisionBudget = field(default_factory=VisionBudget, metadata={
        "help": "pixel budget of each image and video (a task's vision overrides it)"})
    max_image_pixels: int = field(default=89_478_485, metadata={
        "help": "an image whose header claims more pixels fails its item before any decode "
                "(a decompression bomb guard, as data.max_image_pixels in training)"})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "dtype the checkpoints are loaded in"})
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = field(
        default="sdpa", metadata={"help": "transformers attention kernel (hf backend)"})
    backend: Literal["hf", "vllm"] = field(default="hf", metadata={
        "help": "hf: transformers generate (CPU or GPU, data-parallel under torchrun); vllm: "
                "needs vLLM and a GPU"})
    vllm: dict = field(default_factory=dict, metadata={
        "help": "extra vllm.LLM(...) engine arguments (gpu_memory_utilization, "
                "tensor_parallel_size, max_model_len, ...)"})
    # Over all results found in output_dir/results, not only this run's.
    leaderboard: str | None = field(default=None, metadata={
        "help": "write the leaderboard to <this>.md, .json, .html (sortable, deltas vs "
                "leaderboard_base, per-benchmark bars) and .png (grouped bars); null: none"})
    leaderboard_base: str | None = field(default=None, metadata={
        "help": "a checkpoint name: deltas against it in the md and html leaderboards"})
    leaderboard_references: list[str] = field(default_factory=list, metadata={
        "help": "reference rows of Qwen's published scores, with each checkpoint's gap to them, "
                "e.g. [qwen3vl-8b-instruct], or [auto] for the checkpoints' own base models "
                "(eval/references.py); []: none"})
    progress: bool = field(default=True, metadata={"help": "show a console progress bar"})
    preset: Literal["greedy", "qwen3vl-instruct", "qwen3vl-thinking"] = field(default="greedy", metadata={
        "help": "greedy (compare checkpoints on one deterministic answer), qwen3vl-instruct or "
                "qwen3vl-thinking (Qwen's published sampling settings, eval/presets.py); a "
                "generation key set to a value other than its default wins over the preset"})
    samples_per_item: int = field(default=1, metadata={
        "help": "answers sampled per item, with seeds generation.seed, +1, ...; the score is "
                "their mean, with the spread over seeds (needs a sampling preset or do_sample)"})

    def __post_init__(self):
        from eval.presets import apply_generation, task_vision
        from eval.references import resolve

        apply_generation(self.preset, self.generation, GenerationConfig())
        resolve(self.leaderboard_references, [])  # an unknown name fails before any run
        if self.max_image_pixels <= 0:
            raise ValueError(f"max_image_pixels must be > 0, got {self.max_image_pixels}")
        if self.samples_per_item < 1:
            raise ValueError(f"samples_per_item {self.samples_per_item}: must be 1 or more")
        if self.samples_per_item > 1 and not self.generation.do_sample:
            raise ValueError(f"samples_per_item {self.samples_per_item}: greedy decoding gives the "
                             f"same answer every time; set preset: qwen3vl-instruct (or "
                             f"generation.do_sample: true) or samples_per_item: 1")
        for spec in self.tasks:
            spec.vision = {**task_vision(self.preset, spec.name), **spec.vision}
        if not self.checkpoints or not self.tasks:
            raise ValueError("eval config needs at least one entry in checkpoints and in tasks")
        for i, c in enumerate(self.checkpoints):
            check_name(c.name, f"checkpoints[{i}].name")
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoints: names must be unique, got {names}")
        for spec in self.tasks:
            self.vision.with_overrides(spec.vision, f"tasks.{spec.name}.vision")  # checks keys
