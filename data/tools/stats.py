"""``python -m data stats``: what a config's data costs before anything trains on it.

For every source of a ``DataConfig`` (and all of them together) this counts samples and bad
samples per reason, and plans each sample's text / visual / total tokens with
``data.planner.TokenPlanner`` (image headers only, no pixel decoding), so a corpus of any size is
summarised quickly. Budget hits show where the config's limits bite: samples over
``max_seq_len`` or ``max_visual_tokens``, and images whose header size lies above
``max_pixels`` (scaled down: detail lost) or below ``min_pixels`` (scaled up).

With ``data.plan_ahead`` (the default) it also reports what ``data.over_budget`` does to the
over-budget samples, as the trainer will: how many are shrunk and how many dropped.

Sources are read with a skip-policy ``BadSampleLog``: bad records are reported, never fatal.
``read_for_training`` (sources as the trainer gets them) is shared with ``show`` and ``prepare``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.config import DataConfig, SourceConfig
from data.encode import SampleEncoder
from data.media.images import image_size
from data.planner import TokenPlanner, image_grid
from data.samples import BadSample, BadSampleFile, BadSampleLog, Sample, SampleError, reason_of
from data.sources import load

PERCENTILES = (50, 90, 99)
TOKEN_KINDS = ("text", "visual", "total")


@dataclass
class SourceSamples:
    """One configured source, its good samples and the bad records found while reading it
    (and, when read as the trainer reads it, the encoder with the source's budget)."""

    config: SourceConfig
    samples: list[Sample]
    bad: BadSampleLog
    encoder: SampleEncoder | None = None


def _limited(source: SourceConfig, limit: int | None) -> SourceConfig:
    if limit is None:
        return source
    return dataclasses.replace(source, max_samples=min(limit, source.max_samples or limit))


def read_sources(cfg: DataConfig, limit: int | None = None) -> list[SourceSamples]:
    """Every source of ``cfg`` read as it is, with the skip policy. ``limit``: at most the first
    N good samples of each source (bad records are still counted over the whole file)."""
    out = []
    for source in cfg.source_configs():
        source = _limited(source, limit)
        bad = BadSampleLog("skip")
        out.append(SourceSamples(source, load(source, bad), bad))
    return out


def read_for_training(cfg: DataConfig, processor, limit: int | None = None,
                      progress: bool = False) -> list[SourceSamples]:
    """Every source as the trainer gets it, with the skip policy: ``data.corpus.load_corpus``
    reads, plans and fits each sample to the budget (``data.over_budget``: shrunk samples carry
    their smaller ``vision_budget``, dropped ones become bad records), one source at a time so
    each keeps its own bad-sample log."""
    from data.corpus import load_corpus

    out = []
    for source in cfg.source_configs():
        source = _limited(source, limit)
        single = dataclasses.replace(cfg, train="", sources=[source])
        bad = BadSampleLog("skip")
        corpus = load_corpus(single, processor, bad, plan=cfg.plan_ahead, progress=progress)
        out.append(SourceSamples(source, corpus.samples, bad, corpus.encoders[0]))
    return out


@dataclass
class GroupStats:
    """Raw per-sample figures of one source (or of all of them)."""

    name: str
    tokens: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in TOKEN_KINDS})
    images_per_sample: list[int] = field(default_factory=list)
    videos_per_sample: list[int] = field(default_factory=list)
    hits: Counter = field(default_factory=Counter)
    bad: list[BadSample] = field(default_factory=list)

    def absorb(self, other: "GroupStats") -> None:
        for kind in TOKEN_KINDS:
            self.tokens[kind] += other.tokens[kind]
        self.images_per_sample += other.images_per_sample
        self.videos_per_sample += other.videos_per_sample
        self.hits.update(other.hits)
        self.bad += other.bad

    def summary(self, max_bad_fraction: float) -> dict:
        n = len(self.tokens["total"])
        # As training counts them: unreadable records plus samples dropped over budget.
        lost = len(self.bad) + self.hits["samples_dropped_over_budget"]
        bad_fraction = lost / (n + len(self.bad)) if n + len(self.bad) else 0.0
        return {
            "samples": n,
            "bad": len(self.bad),
            "bad_fraction": round(bad_fraction, 6),
            "over_max_bad_fraction": bad_fraction > max_bad_fraction,
            "bad_per_reason": dict(Counter(r.kind for r in self.bad).most_common()),
            "tokens": {kind: distribution(self.tokens[kind]) for kind in TOKEN_KINDS},
            "images_per_sample": count_distribution(self.images_per_sample),
            "videos_per_sample": count_distribution(self.videos_per_sample),
            "budget_hits": {key: self.hits[key] for key in BUDGET_HITS},
        }


BUDGET_HITS = ("samples_over_max_seq_len", "samples_over_max_visual_tokens",
               "samples_shrunk", "samples_dropped_over_budget", "images",
               "images_clamped_by_max_pixels", "images_raised_by_min_pixels")


def distribution(values: list[int]) -> dict:
    """Nearest-rank percentiles (each one a real sample's value), min, mean, max, sum and a
    histogram of ``values``."""
    if not values:
        return {"count": 0}
    arr = np.asarray(values)
    out = {"count": len(values), "min": int(arr.min()), "mean": round(float(arr.mean()), 2)}
    for p in PERCENTILES:
        out[f"p{p}"] = int(np.percentile(arr, p, method="inverted_cdf"))
    out["max"], out["sum"] = int(arr.max()), int(arr.sum())
    counts, edges = np.histogram(arr, bins=min(40, max(1, len(set(values)))))
    out["histogram"] = {"edges": [round(float(e), 2) for e in edges],
                        "counts": [int(c) for c in counts]}
    return out


def count_distribution(values: list[int]) -> dict:
    """Mean, max and how many samples have each count (of images, of videos)."""
    if not values:
        return {"mean": 0.0, "max": 0, "samples_with": {}}
    return {"mean": round(sum(values) / len(values), 3), "max": max(values),
            "samples_with": {str(k): v for k, v in sorted(Counter(values).items())}}


def plan_source(cfg: DataConfig, processor, source: SourceSamples, progress: bool = True) -> GroupStats:
    """Token plans and budget hits of one source's samples. A sample that cannot be planned
    (an unreadable image header) becomes a bad record of that source."""
    from tqdm import tqdm

    budget = cfg.budget(source.config)
    planner = TokenPlanner(processor, budget)
    patch = processor.image_processor.patch_size
    group = GroupStats(source.config.name, bad=list(source.bad.records))
    for sample in tqdm(source.samples, desc=f"stats {source.config.name}", unit="sample",
                       disable=not progress, file=sys.stderr):
        try:
            plan = planner.plan(sample)
            sizes = [image_size(ref) for ref in sample.images]
        except (OSError, ValueError) as e:
            # The reason training's planner gives (data.corpus) for the same sample.
            reason = reason_of(e) if isinstance(e, SampleError) else f"cannot plan: {reason_of(e)}"
            group.bad.append(BadSample(sample.source, sample.index, sample.id, reason,
                                       source.config.name))
            continue
        group.tokens["text"].append(plan.text_tokens)
        group.tokens["visual"].append(plan.visual_tokens)
        group.tokens["total"].append(plan.total)
        group.images_per_sample.append(len(sample.images))
        group.videos_per_sample.append(len(sample.videos))
        group.hits["samples_over_max_seq_len"] += plan.total > cfg.max_seq_len
        if cfg.max_visual_tokens is not None:
            group.hits["samples_over_max_visual_tokens"] += plan.visual_tokens > cfg.max_visual_tokens
        for height, width in sizes:
            _, grid_h, grid_w = image_grid(height, width, budget, patch,
                                           processor.image_processor.merge_size)
            shown = grid_h * patch * grid_w * patch  # pixels of the image the model is given
            group.hits["images"] += 1
            group.hits["images_clamped_by_max_pixels"] += (height * width > budget.max_pixels
                                                           and shown < height * width)
            group.hits["images_raised_by_min_pixels"] += (height * width < budget.min_pixels
                                                          and shown > height * width)
    return group


def count_budget_outcome(group: GroupStats, trained: SourceSamples) -> None:
    """How ``data.over_budget`` treats this source's over-budget samples, as the trainer will."""
    group.hits["samples_shrunk"] += sum(s.vision_budget is not None for s in trained.samples)
    group.hits["samples_dropped_over_budget"] += sum(r.reason.startswith("over budget")
                                                     for r in trained.bad.records)


def collect(cfg: DataConfig, processor, limit: int | None = None,
            progress: bool = True) -> tuple[dict, list[GroupStats]]:
    """The stats document (what ``stats.json`` holds) and the raw groups (sources, then total).
    Tokens and hits are planned at each source's own budget; ``samples_shrunk`` /
    ``samples_dropped_over_budget`` say what the trainer's budget policy then does."""
    sources = read_sources(cfg, limit)
    groups = [plan_source(cfg, processor, s, progress) for s in sources]
    if cfg.plan_ahead:
        for group, trained in zip(groups, read_for_training(cfg, processor, limit)):
            count_budget_outcome(group, trained)
    total = GroupStats("total")
    for group in groups:
        total.absorb(group)
    doc = {
        "max_seq_len": cfg.max_seq_len,
        "max_visual_tokens": cfg.max_visual_tokens,
        "over_budget": cfg.over_budget,
        "max_bad_fraction": cfg.max_bad_fraction,
        "sources": {},
        "total": total.summary(cfg.max_bad_fraction),
    }
    for source, group in zip(sources, groups):
        entry = {"path": source.config.path, "format": source.config.format,
                 "weight": source.config.weight,
                 "vision": dataclasses.asdict(cfg.budget(source.config))}
        entry.update(group.summary(cfg.max_bad_fraction))
        doc["sources"][source.config.name] = entry
    return doc, groups + [total]


def write_histograms(groups: list[GroupStats], out_dir: Path, max_seq_len: int) -> list[Path]:
    """One PNG per token kind: a histogram line per source plus the total. Drawn on bare
    ``Figure`` objects, not pyplot, so the caller's matplotlib backend is left alone."""
    from matplotlib.figure import Figure

    paths = []
    for kind in TOKEN_KINDS:
        fig = Figure(figsize=(7, 4), dpi=100)
        ax = fig.subplots()
        all_values = [v for g in groups for v in g.tokens[kind]]
        bins = np.histogram_bin_edges(all_values or [0], bins=40)
        for group in groups:
            if group.tokens[kind] and (group.name != "total" or len(groups) > 2):
                ax.hist(group.tokens[kind], bins=bins, histtype="step", linewidth=1.5,
                        label=f"{group.name} (n={len(group.tokens[kind])})")
        if kind == "total":
            ax.axvline(max_seq_len, color="red", linestyle="--", label=f"max_seq_len {max_seq_len}")
        ax.set_xlabel(f"{kind} tokens per sample")
        ax.set_ylabel("samples")
        ax.set_title(f"{kind} tokens")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"hist_{kind}_tokens.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def format_table(doc: dict) -> str:
    """The console summary: counts and budget hits, then token percentiles, per source."""
    rows = list(doc["sources"].items()) + [("TOTAL", doc["total"])]
    width = max(12, *(len(name) for name, _ in rows))
    head = (f"{'source':<{width}} {'samples':>8} {'bad':>6} {'img/s':>6} {'vid/s':>6} "
            f"{'>seq_len':>9} {'>vis_tok':>9} {'shrunk':>7} {'dropped':>8} "
            f"{'img>max_px':>10} {'img<min_px':>10}")
    lines = [f"budget: max_seq_len {doc['max_seq_len']}, max_visual_tokens "
             f"{doc['max_visual_tokens']}, over_budget {doc['over_budget']} (shrunk / dropped: what "
             "training does with samples over them; bad: unreadable records)", "", head,
             "-" * len(head)]
    for name, s in rows:
        hits = s["budget_hits"]
        over_vis = hits["samples_over_max_visual_tokens"] if doc["max_visual_tokens"] else "-"
        lines.append(f"{name:<{width}} {s['samples']:>8} {s['bad']:>6} "
                     f"{s['images_per_sample']['mean']:>6.2f} {s['videos_per_sample']['mean']:>6.2f} "
                     f"{hits['samples_over_max_seq_len']:>9} {over_vis:>9} "
                     f"{hits['samples_shrunk']:>7} {hits['samples_dropped_over_budget']:>8} "
                     f"{hits['images_clamped_by_max_pixels']:>10} "
                     f"{hits['images_raised_by_min_pixels']:>10}")
    lines += ["", f"{'tokens p50/p90/p99/max':<{width + 2}}" + "".join(f"{k:>26}" for k in TOKEN_KINDS)]
    for name, s in rows:
        cells = []
        for kind in TOKEN_KINDS:
            d = s["tokens"][kind]
            cells.append("-" if not d["count"] else f"{d['p50']}/{d['p90']}/{d['p99']}/{d['max']}")
        lines.append(f"{name:<{width + 2}}" + "".join(f"{c:>26}" for c in cells))
    for name, s in doc["sources"].items():
        if s["bad"]:
            lines += ["", f"{name}: {s['bad']} bad samples"]
            lines += [f"  {n:6d}  {kind}" for kind, n in s["bad_per_reason"].items()]
    if doc["total"]["over_max_bad_fraction"]:
        lines += ["", f"more than data.max_bad_fraction={doc['max_bad_fraction']} of the samples "
                      "are bad: training on this config would stop at start"]
    return "\n".join(lines)


def run(cfg: DataConfig, processor, processor_path: str, out_dir: str | Path,
        limit: int | None = None, progress: bool = True) -> dict:
    """Read, plan and summarise; writes ``stats.json``, ``bad_samples.jsonl`` and
    ``hist_{text,visual,total}_tokens.png`` under ``out_dir`` and returns the stats document."""
    from data.configio import to_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc, groups = collect(cfg, processor, limit, progress)
    doc = {"processor": processor_path, "limit": limit, "config": to_dict(cfg), **doc}
    (out_dir / "stats.json").write_text(json.dumps(doc, indent=1))
    BadSampleFile(out_dir / "bad_samples.jsonl", mode="w").write(groups[-1].bad, stage="read")
    doc["plots"] = [str(p) for p in write_histograms(groups, out_dir, cfg.max_seq_len)]
    return doc
