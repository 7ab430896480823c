"""A corpus of preference pairs: what training reads under ``train.objective: dpo``, with the
surface of the SFT ``data.corpus.Corpus`` (pairs from ``data.sources.preference``, planned and
encoded by ``data.preference``)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from data.encode import SampleEncoder
from data.media import images as images_lib
from data.mixture import Mixture
from data.planner import TokenPlanner
from data.preference import PairEncoder, PreferencePair, plan_pairs
from data.samples import BadSample, BadSampleLog, DataError
from data.sources.preference import load_pairs


@dataclass
class PairCorpus:
    """Pairs of every configured source, with the surface of ``data.corpus.Corpus`` that the
    training data path uses (``encode``, ``sample_id``, ``bad_record``, ``mixture``,
    ``lengths``, ``summary``), so sampling, resume, skipping bad samples and packing work on
    pairs unchanged. ``lengths``: both sides' tokens (a pair packs into one row)."""

    pairs: list[PreferencePair]
    offsets: list[int]
    sources: list
    encoders: list[PairEncoder]
    lengths: list[int] | None

    def _source_index(self, index: int) -> int:
        return bisect.bisect_right(self.offsets, index) - 1

    def __len__(self) -> int:
        return len(self.pairs)

    def encode(self, index: int) -> dict:
        return self.encoders[self._source_index(index)].encode(self.pairs[index])

    def sample_id(self, index: int) -> str:
        return self.pairs[index].id

    def bad_record(self, index: int, reason: str) -> BadSample:
        pair = self.pairs[index]
        return BadSample(pair.source, pair.index, pair.id, reason,
                         self.sources[self._source_index(index)].name)

    def sizes(self) -> list[int]:
        ends = self.offsets[1:] + [len(self.pairs)]
        return [end - start for start, end in zip(self.offsets, ends)]

    def mixture(self, seed: int) -> Mixture:
        for source, n in zip(self.sources, self.sizes()):
            if n == 0:
                raise DataError(f"source {source.name!r} ({source.path}) has no usable "
                                f"preference pairs; fix it or remove it from data.sources")
        return Mixture(self.sizes(), [s.weight for s in self.sources], seed)

    def summary(self) -> str:
        return ", ".join(f"{s.name}: {n} pairs" for s, n in zip(self.sources, self.sizes()))


def load_pair_corpus(cfg, processor, bad: BadSampleLog, plan: bool = True) -> PairCorpus:
    """Every preference source of the ``DataConfig`` read and (with ``plan``) planned: pairs
    over budget shrunk or reported like SFT samples."""
    images_lib.set_max_image_pixels(cfg.max_image_pixels)
    pairs, offsets, encoders, lengths = [], [], [], []
    for source in cfg.source_configs():
        budget = cfg.budget(source)
        found = load_pairs(source, bad)
        if plan:
            start = len(bad.records)
            found, sides = plan_pairs(found, TokenPlanner(processor, budget), cfg, bad)
            bad.name_source(start, source.name)
            lengths += [a + b for a, b in sides]
        offsets.append(len(pairs))
        pairs += found
        encoders.append(PairEncoder(SampleEncoder(processor, budget, cfg.max_seq_len)))
    return PairCorpus(pairs, offsets, cfg.source_configs(), encoders, lengths if plan else None)
