"""Our checkpoints as an lmms-eval model: ``lmms-eval --model qwen3vl_tune --model_args
pretrained=PATH[,adapter=DIR] --tasks ...`` runs any lmms-eval generation task on anything
``eval.checkpoints.resolve_checkpoint`` understands (hub id, fine-tuned folder, training run,
step checkpoint, LoRA adapter; dense or MoE read from config.json, not guessed from the name).

Registered through the ``lmms_eval.models`` entry point in pyproject.toml (``manifest``).
Prompts go through the checkpoint's own chat template and processor exactly as in
``python -m eval`` (``data.encode.SampleEncoder``): no system prompt is added (Qwen3-VL has
none by default), images come before the text unless the text places them with ``<image>``
or ``<image n>`` tags. Replies have their ``<think>`` block removed (``strip_thinking=False``
keeps it); an unfinished one becomes "" (no answer was written). A sample whose input cannot
be prepared, or whose generation fails alone, gets "" and a warning; the run goes on.

Model args: pretrained, adapter, dtype (auto: bfloat16 on GPU, float32 on CPU),
attn_implementation, device, batch_size, min_pixels, max_pixels, max_new_tokens (the cap when
a task sets none), system_prompt, strip_thinking.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from data.config import VisionBudget
from data.media.video import VideoRef
from data.samples import Sample
from data.sources.chat import IMAGE_TAG, NUMBERED_IMAGE_TAG, tagged_parts
from eval.checkpoints import resolve_checkpoint
from eval.config import GenerationConfig
from eval.generate import HFGenerator
from eval.metrics import prompt_opens_thinking, strip_thinking, thinking_truncated
from eval.runner import generate_each

MODEL_ID = "qwen3vl_tune"
log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpeg", ".mpg")


def manifest() -> ModelManifest:
    """The ``lmms_eval.models`` entry point: lmms-eval finds the class by this id."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path="eval.lmms_model.Qwen3VLTune",
                         aliases=("qwen3vl-tune",))


class Qwen3VLTune(lmms):
    is_simple = True

    def __init__(self, pretrained: str, adapter: str | None = None, dtype: str = "auto",
                 attn_implementation: str = "sdpa", device: str | None = None,
                 batch_size: int | str = 1, min_pixels: int | None = None,
                 max_pixels: int | None = None, max_new_tokens: int = 128,
                 system_prompt: str | None = None, strip_thinking: bool = True,
                 max_batch_size: int | None = None) -> None:
        super().__init__()
        del max_batch_size  # passed by the lmms-eval CLI; only meaningful with batch_size=auto
        if str(batch_size).startswith("auto"):
            raise ValueError("qwen3vl_tune: batch_size=auto is not supported; give a number "
                             "(--batch_size 8)")
        self.batch_size_per_gpu = int(batch_size)
        self._init_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        self.resolved = resolve_checkpoint(pretrained, adapter)
        settings = SimpleNamespace(dtype=dtype, attn_implementation=attn_implementation,
                                   generation=GenerationConfig(batch_size=self.batch_size_per_gpu,
                                                               max_new_tokens=int(max_new_tokens)))
        self.generator = HFGenerator(self.resolved, settings, self._device)
        self.processor = self.generator.processor
        self.default_max_new_tokens = int(max_new_tokens)
        budget = VisionBudget()
        self.budget = VisionBudget(min_pixels=int(min_pixels or budget.min_pixels),
                                   max_pixels=int(max_pixels or budget.max_pixels))
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        self.strip_thinking = _as_bool(strip_thinking)
        self.prompt_opens_thinking = prompt_opens_thinking(self.processor)
        self.thinking_truncated = 0

    def _init_device(self, device: str | None) -> None:
        """One process: the requested device (default: cuda when present). Under ``accelerate
        launch`` / ``torchrun``: one device per process, requests sharded by lmms-eval."""
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self.accelerator = accelerator
            self._device = accelerator.device
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # Properties lmms-eval reads.
    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def model(self):
        return self.generator.model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    def loglikelihood(self, requests):
        raise NotImplementedError("qwen3vl_tune implements generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("qwen3vl_tune implements generate_until tasks only")

    def generate_until(self, requests) -> list[str]:
        replies: list[str | None] = [None] * len(requests)
        # Same generation settings in one batch; longest prompts first, so a batch that runs
        # out of memory does so at the start.
        keys = [_kwargs_key(r.args[1]) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (keys[i], -len(requests[i].args[0])))
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="qwen3vl_tune")
        for chunk in self._chunks(order, keys):
            gen_kwargs = requests[chunk[0]].args[1]
            self.generator.gen = self.generation_config(gen_kwargs)  # this batch's settings
            prepared = []
            for i in chunk:
                try:
                    prepared.append((i, self.generator.prepare(self.sample(requests[i]), self.budget)))
                except Exception as e:  # noqa: BLE001 - a task's doc_to_visual may raise anything
                    replies[i] = self._failed(requests[i], e)
            for i, text in generate_each(self.generator, prepared):
                replies[i] = (self._failed(requests[i], text) if isinstance(text, Exception)
                              else self.postprocess(text, gen_kwargs.get("until")))
                self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs),
                                            replies[i])
            bar.update(len(chunk))
        bar.close()
        if self.thinking_truncated:
            log.warning("qwen3vl_tune: %d replies ended inside <think> (raise max_new_tokens)",
                        self.thinking_truncated)
        return replies

    def _chunks(self, order: list[int], keys: list[str]) -> list[list[int]]:
        """Consecutive requests of ``order`` in batches of at most batch_size, one key each."""
        chunks: list[list[int]] = []
        for i in order:
            if chunks and len(chunks[-1]) < self.batch_size_per_gpu and keys[chunks[-1][0]] == keys[i]:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return chunks

    def sample(self, request) -> Sample:
        """The request as one user turn: the task's text with its visuals."""
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [v for v in visuals if not _is_video(v)]
        videos = [VideoRef(v) for v in visuals if _is_video(v)]
        parts, ordered = image_parts(context, images)
        content = [{"type": "video"} for _ in videos] + parts
        messages = [{"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": ""}]}]
        if self.system_prompt:
            messages.insert(0, {"role": "system",
                                "content": [{"type": "text", "text": self.system_prompt}]})
        return Sample(id=f"{task}/{split}/{doc_id}", messages=messages, images=ordered,
                      videos=videos)

    def generation_config(self, gen_kwargs: dict) -> GenerationConfig:
        """lmms-eval's per-task generation_kwargs (temperature 0 means greedy)."""
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        return GenerationConfig(
            batch_size=self.batch_size_per_gpu,
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens),
            do_sample=sample, temperature=temperature if sample else 1.0,
            top_p=float(gen_kwargs.get("top_p") or 1.0), top_k=int(gen_kwargs.get("top_k") or 0),
            repetition_penalty=float(gen_kwargs.get("repetition_penalty") or 1.0))

    def postprocess(self, text: str, until) -> str:
        reply = clean_reply(text, until, self.strip_thinking, self.prompt_opens_thinking)
        if reply is None:
            self.thinking_truncated += 1
            return ""
        return reply

    def _failed(self, request, error: Exception) -> str:
        _, _, _, doc_id, task, split = request.args
        log.warning("qwen3vl_tune: %s/%s doc %s failed, scored as an empty reply: %s",
                    task, split, doc_id, error)
        return ""


def clean_reply(text: str, until, strip: bool = True, opens_thinking: bool = False) -> str | None:
    """The reply a task scores: reasoning removed (``strip``), cut at the first of the task's
    ``until`` strings. None when the reasoning never finished (no answer was written)."""
    if strip:
        if thinking_truncated(text, opens_thinking):
            return None
        text = strip_thinking(text)
    for stop in ([until] if isinstance(until, str) else until or []):
        if stop:
            text = text.split(stop, 1)[0]
    return text


def image_parts(context: str, images: list) -> tuple[list[dict], list]:
    """Content parts for the text and its images, and the images in the order the parts place
    them. ``<image>`` placeholders (one per image) and ``<image n>`` tags (the n-th smallest
    tag number is the n-th visual: lmms-eval's MMMU order) place images in the text; otherwise
    the images come first, as in Qwen3-VL's own evaluation."""
    if images and context.count(IMAGE_TAG) == len(images):
        return tagged_parts(context)[0], list(images)
    tags = sorted({int(n) for n in NUMBERED_IMAGE_TAG.findall(context)})
    if images and len(tags) == len(images):
        return tagged_parts(context, dict(zip(tags, images)))
    text = context.replace(IMAGE_TAG, "")
    return [{"type": "image"} for _ in images] + [{"type": "text", "text": text}], list(images)


def _is_video(visual) -> bool:
    return isinstance(visual, str) and visual.lower().endswith(VIDEO_SUFFIXES)


def _kwargs_key(gen_kwargs: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in gen_kwargs.items()))


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
