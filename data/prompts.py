"""Prompts for reinforcement fine-tuning (GRPO): an SFT corpus read as prompts.

Any SFT source works: a sample's turns before its last assistant reply are the prompt
(``Sample.prompt_messages``), its last reply is the reference the rewards compare against
(``Sample.answer()`` / ``meta``). ``PromptCorpus`` has the surface of ``data.corpus.Corpus``
that training reads (``encode``, ``sample_id``, ``bad_record``, ``mixture``, ``lengths``,
``summary``, ``len``), so sampling, resume, mixtures and skipping bad samples are unchanged.

- ``encode(index)``: the generation input (``SampleEncoder.encode_prompt``: the prompt and the
  assistant header, pixels, grids, ``mm_token_type_ids``) plus the ``Sample`` itself under
  ``PROMPT_SAMPLE`` (the rewards score a completion against it; a plain dataclass, picklable for
  DataLoader workers).
- ``lengths``: prompt tokens (text + visual), planned from media headers as for SFT.
- Budgets (``load_prompt_corpus``): a prompt is over budget when the longest row it can make,
  the prompt plus ``max_new_tokens`` generated tokens (and the closing ``<|im_end|>``), is over
  ``data.max_seq_len`` / ``data.max_visual_tokens``; under ``over_budget: shrink`` its images
  get the largest budget under which that row fits, as for SFT.

``PromptCollator`` keeps a micro-batch as a list of prompts (``PromptBatch``): nothing is padded
until the rollouts (``train/objectives/rollout.py``) left-pad them for generation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from data.corpus import Corpus, _over_budget, _shrink, load_corpus, plan_each
from data.encode import SampleTooLong
from data.mixture import Mixture
from data.planner import Plan, TokenPlanner
from data.samples import BadSample, BadSampleLog, Sample

PROMPT_SAMPLE = "prompt_sample"  # key of an encoded prompt holding its Sample (not a tensor)
PROMPTS = "prompts"  # key of a collated micro-batch holding its PromptBatch
RESERVE_TOKEN = "<|endoftext|>"  # one token each, whatever surrounds it: stands in for replies


@dataclass
class PromptCorpus:
    """An SFT ``Corpus`` read as prompts (see the module doc). ``lengths``: prompt tokens;
    ``max_new_tokens``: the generation budget, refused at encode time too when a prompt's
    encoding leaves no room for it within ``max_seq_len``."""

    corpus: Corpus
    lengths: list[int] | None
    max_new_tokens: int = 0

    @property
    def samples(self) -> list[Sample]:
        return self.corpus.samples

    @property
    def sources(self):
        return self.corpus.sources

    def __len__(self) -> int:
        return len(self.corpus)

    def encode(self, index: int) -> dict:
        encoder = self.corpus.encoder_for(index)
        sample = self.corpus.samples[index]
        example = encoder.encode_prompt(sample)
        n = len(example["input_ids"])
        if n + self.max_new_tokens + 1 > encoder.max_seq_len:
            raise SampleTooLong(f"prompt of {n} tokens + max_new_tokens {self.max_new_tokens} "
                                f"> max_seq_len {encoder.max_seq_len}")
        example[PROMPT_SAMPLE] = sample
        return example

    def sample_id(self, index: int) -> str:
        return self.corpus.sample_id(index)

    def bad_record(self, index: int, reason: str) -> BadSample:
        return self.corpus.bad_record(index, reason)

    def sizes(self) -> list[int]:
        return self.corpus.sizes()

    def mixture(self, seed: int) -> Mixture:
        return self.corpus.mixture(seed)

    def summary(self) -> str:
        return ", ".join(f"{s.name}: {n} prompts" for s, n in zip(self.sources, self.sizes()))


def budget_sample(sample: Sample, max_new_tokens: int) -> Sample:
    """The longest conversation a rollout of ``sample`` can make, for planning: its prompt and a
    reply of ``max_new_tokens`` one-token placeholders (same media, same budget)."""
    reply = {"role": "assistant",
             "content": [{"type": "text", "text": RESERVE_TOKEN * max_new_tokens}]}
    return dataclasses.replace(sample, messages=sample.prompt_messages() + [reply])


def prompt_tokens(planner: TokenPlanner, sample: Sample, max_new_tokens: int) -> tuple[int, object]:
    """(prompt tokens as ``encode_prompt`` makes them, the plan of the longest rollout row: the
    prompt, ``max_new_tokens`` and the closing ``<|im_end|>``). The two renders differ in text
    only, so the prompt's count is the rendered conversation's less the text tokens the reply
    adds. (``_shrink`` plans the rendered conversation itself, one token longer than the row:
    a shrunk budget may be one token conservative.)"""
    longest = budget_sample(sample, max_new_tokens)
    plan = planner.plan(longest)
    processor = planner.processor
    count = lambda text: len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    full = count(processor.apply_chat_template(longest.messages, tokenize=False))
    prompt = count(processor.apply_chat_template(sample.prompt_messages(), tokenize=False,
                                                 add_generation_prompt=True))
    n = plan.total - (full - prompt)
    row = n + max_new_tokens + 1  # the longest row: prompt, completion, closing <|im_end|>
    return n, Plan(text_tokens=row - plan.visual_tokens, visual_tokens=plan.visual_tokens)


def plan_prompts(samples: list[Sample], planner: TokenPlanner, cfg, bad: BadSampleLog,
                 max_new_tokens: int) -> tuple[list[Sample], list[int]]:
    """(kept samples, their prompt tokens). Over budget: the prompt plus ``max_new_tokens``
    (see the module doc); shrunk or reported as ``data.over_budget`` says."""
    def plan_one(sample):
        n, plan = prompt_tokens(planner, sample, max_new_tokens)
        problem = _over_budget(plan, cfg)
        if problem and cfg.over_budget == "shrink":
            shrunk = _shrink(budget_sample(sample, max_new_tokens), planner, cfg)
            if shrunk is not None:
                sample.vision_budget = shrunk[0]
                n, plan = prompt_tokens(planner, sample, max_new_tokens)
                problem = _over_budget(plan, cfg)
            else:
                problem += " (still over at the smallest vision budget)"
        return n, problem and f"prompt + max_new_tokens {max_new_tokens}: {problem}"

    return plan_each(samples, plan_one, bad)


def load_prompt_corpus(cfg, processor, bad: BadSampleLog, plan: bool = True,
                       max_new_tokens: int = 0) -> PromptCorpus:
    """Every source of the ``DataConfig`` read as SFT (``load_corpus``, unplanned), then, with
    ``plan``, its prompts planned: lengths and budgets as in the module doc, bad prompts to
    ``bad``."""
    corpus = load_corpus(cfg, processor, bad, plan=False)
    if not plan:
        return PromptCorpus(corpus, None, max_new_tokens)
    samples, offsets, lengths = [], [], []
    ends = corpus.offsets[1:] + [len(corpus.samples)]
    for source, encoder, start, end in zip(corpus.sources, corpus.encoders, corpus.offsets, ends):
        first_bad = len(bad.records)
        found, found_lengths = plan_prompts(corpus.samples[start:end],
                                            TokenPlanner(processor, encoder.budget), cfg, bad,
                                            max_new_tokens)
        bad.name_source(first_bad, source.name)
        offsets.append(len(samples))
        samples += found
        lengths += found_lengths
    planned = Corpus(samples, offsets, corpus.sources, corpus.encoders, lengths)
    return PromptCorpus(planned, lengths, max_new_tokens)


# --- Batching ----------------------------------------------------------------------------------

class PromptBatch:
    """A micro-batch of encoded prompts, unpadded: ``examples`` (``encode_prompt`` outputs: only
    tensors), ``samples`` (their ``Sample``s, for the rewards) and ``ids``. ``to(device)`` moves
    the tensors, so the loop's ``{k: v.to(device)}`` works on a collated batch unchanged."""

    def __init__(self, examples: list[dict], samples: list[Sample], ids: list[str]):
        self.examples, self.samples, self.ids = examples, samples, ids

    def __len__(self) -> int:
        return len(self.examples)

    def to(self, device) -> PromptBatch:
        moved = [{k: v.to(device) for k, v in e.items()} for e in self.examples]
        return PromptBatch(moved, self.samples, self.ids)


class PromptCollator:
    """``TrainCollator`` for prompts: ``{PROMPTS: PromptBatch, "skipped", "repaired",
    "samples"}`` (the last three as the loop pops them). Prompts are never packed (rollout rows
    are padded), so ``packing`` must be off."""

    def __init__(self, pad_token_id: int, packing: bool = False, merge_size: int = 2):
        if packing:
            raise ValueError("GRPO does not pack: each micro-batch's rollouts are padded rows; "
                             "set data.packing=false")
        self.pad_token_id, self.merge_size = pad_token_id, merge_size

    def __call__(self, examples: list[dict]) -> dict:
        skipped = [s for e in examples for s in e.pop("skipped", [])]
        repaired = [s for e in examples for s in e.pop("repaired", [])]
        samples = [e.pop(PROMPT_SAMPLE) for e in examples]
        described = [describe_prompt(e, self.merge_size) for e in examples]  # pops sample_id
        prompts = PromptBatch([{k: v for k, v in e.items() if isinstance(v, torch.Tensor)}
                               for e in examples], samples, [d["id"] for d in described])
        return {PROMPTS: prompts, "skipped": skipped, "repaired": repaired, "samples": described}


def describe_prompt(example: dict, merge_size: int) -> dict:
    """Id and size of one prompt, for messages about its batch (``train.data.describe_example``)."""
    visual = sum(int(example[grid].prod(-1).sum()) // merge_size ** 2
                 for grid in ("image_grid_thw", "video_grid_thw") if grid in example)
    return {"id": example.pop("sample_id", "?"), "index": example.pop("sample_index", None),
            "tokens": len(example["input_ids"]),
            "visual_tokens": visual}


def prompts_in(batch: dict) -> int:
    """Prompts in a collated micro-batch (the unit GRPO's loss is averaged over)."""
    return len(batch[PROMPTS])
