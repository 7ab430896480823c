"""A training corpus: every configured source read, checked, planned and given its encoder.

This is where a data config meets the processor. Sources are concatenated in config order
(``offsets[i]`` is the first global index of source ``i``); each has its own encoder because
each may have its own vision budget. When lengths are needed (packing, length grouping, a
visual-token cap), every sample is planned up front from media headers. A sample over
``max_seq_len`` / ``max_visual_tokens`` is, by ``data.over_budget``, shrunk (its images and
videos get the largest scaled-down budget under which it fits; text is never cut) or dropped
with a reason, before the first step.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass

from tqdm import tqdm

from data.config import DataConfig, SourceConfig, VisionBudget
from data.encode import SampleEncoder
from data.media import images as images_lib
from data.mixture import Mixture
from data.planner import TokenPlanner
from data.samples import BadSample, BadSampleLog, DataError, Sample, SampleError, reason_of
from data.sources import load


@dataclass
class Corpus:
    """Samples of every configured source (or anything with a sample's ``id``, ``source`` and
    ``index`` that its source's encoder encodes: preference pairs, ``data.pair_corpus``)."""

    samples: list[Sample]
    offsets: list[int]
    sources: list[SourceConfig]
    encoders: list[SampleEncoder]
    lengths: list[int] | None  # planned tokens per sample (text + visual), when planned

    def encoder_for(self, index: int) -> SampleEncoder:
        """The encoder of the source that global sample ``index`` comes from."""
        return self.encoders[bisect.bisect_right(self.offsets, index) - 1]

    def __len__(self) -> int:
        return len(self.samples)

    def encode(self, index: int) -> dict:
        """Model inputs of global sample ``index``, at its source's (or its own shrunk) budget."""
        return self.encoder_for(index).encode(self.samples[index])

    def sample_id(self, index: int) -> str:
        return self.samples[index].id

    def bad_record(self, index: int, reason: str) -> BadSample:
        sample = self.samples[index]
        return BadSample(sample.source, sample.index, sample.id, reason, self.source_of(index).name)

    def source_of(self, index: int) -> SourceConfig:
        """The configured source global sample ``index`` comes from."""
        return self.sources[bisect.bisect_right(self.offsets, index) - 1]

    def sizes(self) -> list[int]:
        return [end - start for start, end in zip(self.offsets, self.offsets[1:] + [len(self.samples)])]

    def mixture(self, seed: int) -> Mixture:
        for source, n in zip(self.sources, self.sizes()):
            if n == 0:
                raise DataError(f"source {source.name!r} ({source.path}) has no usable samples; "
                                f"fix it or remove it from data.sources")
        return Mixture(self.sizes(), [s.weight for s in self.sources], seed)

    def summary(self) -> str:
        return ", ".join(f"{s.name}: {n}" for s, n in zip(self.sources, self.sizes()))


def load_corpus(cfg: DataConfig, processor, bad: BadSampleLog, plan: bool,
                progress: bool = False, sequence_parallel: int = 1) -> Corpus:
    """Every source read (and with ``plan``, planned: token counts, budgets, over-budget
    samples shrunk or reported). ``sequence_parallel``: the training run's degree, named in
    over-budget reasons (one sample is split over that many ranks)."""
    images_lib.set_max_image_pixels(cfg.max_image_pixels)  # for planning and encoding alike
    samples, offsets, encoders, lengths = [], [], [], []
    for source in cfg.source_configs():
        budget = cfg.budget(source)
        found = load(source, bad)
        if plan:
            start = len(bad.records)
            found, found_lengths = _plan(found, TokenPlanner(processor, budget), cfg, bad,
                                         progress, source.name, sequence_parallel)
            bad.name_source(start, source.name)
            lengths += found_lengths
        offsets.append(len(samples))
        samples += found
        encoders.append(SampleEncoder(processor, budget, cfg.max_seq_len))
    return Corpus(samples, offsets, cfg.source_configs(), encoders, lengths if plan else None)


def plan_each(items, plan_one, bad: BadSampleLog, progress: bool = False, desc: str = ""):
    """(kept items, their lengths) for samples, pairs or prompts alike: ``plan_one(item)`` ->
    (length, problem or None). An item that cannot be planned, or whose plan has a problem,
    goes to ``bad`` with the reason (``over budget: <problem>``) instead."""
    kept, lengths = [], []
    for item in tqdm(items, desc=desc, disable=not progress, leave=False):
        try:
            length, problem = plan_one(item)
        except (OSError, ValueError) as e:
            reason = reason_of(e) if isinstance(e, SampleError) else f"cannot plan: {reason_of(e)}"
            bad.add(BadSample(item.source, item.index, item.id, reason))
            continue
        if problem:
            bad.add(BadSample(item.source, item.index, item.id, f"over budget: {problem}"))
            continue
        kept.append(item)
        lengths.append(length)
    return kept, lengths


def _plan(samples, planner, cfg: DataConfig, bad: BadSampleLog, progress: bool, name: str,
          sequence_parallel: int = 1):
    def plan_one(sample):
        p = planner.plan(sample)
        problem = _over_budget(p, cfg)
        if problem and cfg.over_budget == "shrink":
            shrunk = _shrink(sample, planner, cfg)
            if shrunk is None:
                return p.total, problem + " (still over at the smallest vision budget)" + \
                    _how_to_fit(p, cfg, sequence_parallel)
            sample.vision_budget, p = shrunk
            return p.total, None
        return p.total, problem and problem + _how_to_fit(p, cfg, sequence_parallel)

    return plan_each(samples, plan_one, bad, progress, f"planning {name}")


def _over_budget(p, cfg: DataConfig) -> str | None:
    if p.total > cfg.max_seq_len:
        return f"{p.total} tokens > data.max_seq_len {cfg.max_seq_len} ({p.visual_tokens} visual)"
    if cfg.max_visual_tokens is not None and p.visual_tokens > cfg.max_visual_tokens:
        return f"{p.visual_tokens} visual tokens > data.max_visual_tokens {cfg.max_visual_tokens}"
    return None


def _how_to_fit(p, cfg: DataConfig, sequence_parallel: int) -> str:
    """What would let a sample over data.max_seq_len train: samples are never cut (a cut
    through visual tokens breaks them), so a larger max_seq_len, whose memory sequence
    parallelism divides between ranks."""
    if p.total <= cfg.max_seq_len:
        return ""
    per_rank = -(-p.total // sequence_parallel)
    where = (f"with distributed.sequence_parallel={sequence_parallel} each rank would hold "
             f"{per_rank} of its tokens" if sequence_parallel > 1 else
             "distributed.sequence_parallel=N splits one sample's tokens over N ranks")
    return (f"; to train it, raise data.max_seq_len to >= {p.total} ({where}) or lower "
            f"data.vision's budget")


def scaled_budget(budget: VisionBudget, scale: float) -> VisionBudget:
    """``budget`` with its pixel (and frame) allowances times ``scale``, never below minimums."""
    frames = budget.max_frames if budget.num_frames else max(
        budget.min_frames, int(budget.max_frames * scale) // 2 * 2)
    return dataclasses.replace(
        budget, max_pixels=max(budget.min_pixels, int(budget.max_pixels * scale)),
        video_max_pixels=max(budget.video_min_pixels, int(budget.video_max_pixels * scale)),
        video_total_pixels=max(budget.video_min_pixels * budget.min_frames,
                               int(budget.video_total_pixels * scale)),
        max_frames=frames)


def _shrink(sample, planner: TokenPlanner, cfg: DataConfig, steps: int = 12):
    """The largest scaled-down budget under which ``sample`` fits (bisection on the scale),
    with its plan; None when even the smallest budget is over."""
    def attempt(scale: float):
        budget = scaled_budget(planner.budget, scale)
        return budget, TokenPlanner(planner.processor, budget).plan(sample)

    best = attempt(0.0)
    if _over_budget(best[1], cfg):
        return None
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        budget, p = attempt(mid)
        if _over_budget(p, cfg):
            hi = mid
        else:
            lo, best = mid, (budget, p)
    return best
