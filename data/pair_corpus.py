"""A corpus of preference pairs: what training reads under ``train.objective: dpo``. It is a
``data.corpus.Corpus`` whose items are pairs (from ``data.sources.preference``) and whose
encoders are ``PairEncoder``s: a pair has what the corpus asks of a sample (``id``,
``source``, ``index``; encoded by its source's encoder), so sampling, mixtures, resume,
skipping bad pairs and packing work on pairs unchanged. Its ``lengths`` are both sides'
tokens (a pair packs into one row)."""

from __future__ import annotations

from data.corpus import Corpus
from data.encode import SampleEncoder
from data.media import images as images_lib
from data.planner import TokenPlanner
from data.preference import PairEncoder, plan_pairs
from data.samples import BadSampleLog
from data.sources.preference import load_pairs


def load_pair_corpus(cfg, processor, bad: BadSampleLog, plan: bool = True) -> Corpus:
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
    return Corpus(pairs, offsets, cfg.source_configs(), encoders, lengths if plan else None)
