"""``python -m data check``: find, before step 1, every sample training would reject.

Two ways in:

- a data file (``check PATH --format F``): every record is read by the format's reader, then
  every image header is opened and checked as the planner checks it (empty, not an image,
  truncated, too large to decode safely, an aspect ratio Qwen3-VL cannot resize); videos are
  probed by the reader already (header and first frame);
- a config (``check CONFIG.yaml``): the data as training reads it (``data.corpus.load_corpus``:
  read, planned from headers, fitted to the token budget), with the processor of
  ``model.path``, so a rejected sample is reported with the very reason training gives.

``decode`` adds a full decode of every image and video (encoding each sample as training does,
in config mode): slower, and the only way to find a truncated JPEG or video frames that fail to
decode. A sample used after a repair (frames filled) is listed as repaired, not bad.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tqdm import tqdm

from data.config import DataConfig, SourceConfig, VisionBudget
from data.encode import REPAIRS
from data.media import images as images_lib
from data.media import video as video_lib
from data.samples import BadSample, BadSampleLog, Sample, reason_of
from data.sources import load


@dataclass
class CheckResult:
    good: list[Sample] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)
    repaired: list[BadSample] = field(default_factory=list)  # used, after the repair named


def check_file(source: SourceConfig, decode: bool = False, progress: bool = False) -> CheckResult:
    """Read ``source`` and open the media of every sample it yields (no processor needed)."""
    bad = BadSampleLog("skip")
    samples = load(source, bad)
    result = CheckResult(bad=list(bad.records))
    budget = VisionBudget()
    for sample in tqdm(samples, desc=f"checking {source.name}", disable=not progress, leave=False):
        try:
            for ref in sample.images:
                images_lib.inspect_image(ref, decode=decode)
            if decode:
                result.repaired += [_record(sample, source.name, reason)
                                    for reason in _decode_videos(sample, budget)]
        except (OSError, ValueError) as e:
            result.bad.append(_record(sample, source.name, reason_of(e)))
            continue
        result.good.append(sample)
    return result


def _decode_videos(sample: Sample, budget: VisionBudget) -> list[str]:
    """Decode every video of ``sample`` at ``budget`` with Qwen3-VL's patch sizes; the repairs."""
    repairs = []
    for k, ref in enumerate(sample.videos):
        loaded = video_lib.load(ref, budget)
        if loaded.filled:
            repairs.append(f"video {k + 1} ({ref}): {loaded.filled} of {len(loaded.frames)} sampled "
                           "frames could not be decoded and repeat the frame before them")
    return repairs


def _record(sample: Sample, name: str, reason: str) -> BadSample:
    return BadSample(sample.source, sample.index, sample.id, reason, name)


def check_config(cfg: DataConfig, processor, decode: bool = False,
                 progress: bool = False) -> dict[str, CheckResult]:
    """Per source: the samples training keeps and the records of those it rejects, read and
    planned as the trainer does (``on_bad_sample`` aside: everything is reported). With
    ``decode``, each kept sample is also encoded as a training step would encode it."""
    from data.corpus import load_corpus

    out = {}
    for source in cfg.source_configs():
        single = dataclasses.replace(cfg, train="", sources=[source])
        bad = BadSampleLog("skip")
        corpus = load_corpus(single, processor, bad, plan=True, progress=progress)
        result = CheckResult(bad=list(bad.records))
        for index, sample in enumerate(tqdm(corpus.samples, desc=f"decoding {source.name}",
                                            disable=not (progress and decode), leave=False)):
            if decode:
                try:
                    example = corpus.encode(index)
                except (OSError, ValueError) as e:  # what the trainer skips and reports
                    result.bad.append(corpus.bad_record(index, reason_of(e)))
                    continue
                result.repaired += [corpus.bad_record(index, r) for r in example.pop(REPAIRS, [])]
            result.good.append(sample)
        out[source.name] = result
    return out
