"""A training corpus: every configured source read, checked, planned and given its encoder.

This is where a data config meets the processor. Sources are concatenated in config order
(``offsets[i]`` is the first global index of source ``i``); each has its own encoder because
each may have its own vision budget. When lengths are needed (packing, length grouping, a
visual-token cap), every sample is planned up front from media headers, and samples over the
budget are dropped here with a reason, before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from data.config import DataConfig, SourceConfig
from data.encode import SampleEncoder
from data.mixture import Mixture
from data.planner import TokenPlanner
from data.samples import BadSample, BadSampleLog, DataError, Sample
from data.sources import load


@dataclass
class Corpus:
    samples: list[Sample]
    offsets: list[int]
    sources: list[SourceConfig]
    encoders: list[SampleEncoder]
    lengths: list[int] | None  # planned tokens per sample (text + visual), when planned

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
                progress: bool = False) -> Corpus:
    samples, offsets, encoders, lengths = [], [], [], []
    for source in cfg.source_configs():
        budget = cfg.budget(source)
        found = load(source, bad)
        if plan:
            found, found_lengths = _plan(found, TokenPlanner(processor, budget), cfg, bad,
                                         progress, source.name)
            lengths += found_lengths
        offsets.append(len(samples))
        samples += found
        encoders.append(SampleEncoder(processor, budget, cfg.max_seq_len))
    return Corpus(samples, offsets, cfg.source_configs(), encoders, lengths if plan else None)


def _plan(samples, planner, cfg: DataConfig, bad: BadSampleLog, progress: bool, name: str):
    kept, lengths = [], []
    for sample in tqdm(samples, desc=f"planning {name}", disable=not progress, leave=False):
        try:
            p = planner.plan(sample)
        except (OSError, ValueError) as e:
            bad.add(BadSample(sample.source, sample.index, sample.id,
                              f"cannot plan: {type(e).__name__}: {e}"))
            continue
        if p.total > cfg.max_seq_len:
            bad.add(BadSample(sample.source, sample.index, sample.id,
                              f"over budget: {p.total} tokens > data.max_seq_len {cfg.max_seq_len} "
                              f"({p.visual_tokens} visual)"))
            continue
        if cfg.max_visual_tokens is not None and p.visual_tokens > cfg.max_visual_tokens:
            bad.add(BadSample(sample.source, sample.index, sample.id,
                              f"over budget: {p.visual_tokens} visual tokens > "
                              f"data.max_visual_tokens {cfg.max_visual_tokens}"))
            continue
        kept.append(sample)
        lengths.append(p.total)
    return kept, lengths
