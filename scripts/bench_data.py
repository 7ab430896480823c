"""Data-stage figures on the embedded default (tiny processor, synthetic corpus).

  planner_cases, planner_mismatches   token planner vs the real processor: images and videos
  video_planner_cases, video_planner_mismatches
                                      the video share: text (timestamps) + visual tokens of
                                      random shapes (sides, aspect ratios up to 200:1, duration,
                                      native fps, budgets sampling by fps or num_frames)
  planner_sample_mismatches           planned vs encoded length of whole samples: the synthetic
                                      corpus plus video samples (video_planner_sample_mismatches:
                                      real mp4/mkv/webm clips of random size, rate and length)
  planner_samples_per_s               planning whole samples from image headers (no decoding)
  encode_samples_per_s                full encoding (decode, resize, tokenise, labels) on 1 core
  prepared_read_samples_per_s         the same samples read back from a prepared cache
                                      (python -m data prepare, data.prepared): what a training
                                      run gets per item; prepared_read_vs_encode_speedup: the
                                      ratio to encode_samples_per_s
  hf_processor_samples_per_s          the plain HF path on the same samples and core:
                                      processor.apply_chat_template(tokenize=True) with image
                                      paths in the messages (hf_processor_identical: same ids,
                                      pixels and grids as ours)
  packing_efficiency                  real tokens / (rows x 16384) when a mixed corpus (text,
                                      1-3 images of random sizes, videos, long and short turns)
                                      is packed into 16k-token rows
  padding_efficiency                  real tokens / padded tokens, pad-to-longest batches of
                                      the same samples per step (the baseline);
                                      grouped_padding_efficiency: with data.group_by_length
  bad_input_kinds, bad_input_reported, bad_input_crashes
                                      the faulty corpus of data/tools/faults.py read, planned and
                                      encoded: kinds of hostile input present, handled (a bad
                                      sample reported with its reason; an EXIF-oriented photo or
                                      rotated video trained upright; filled video frames on
                                      record), crashes
  real_format_fixtures, real_format_fixtures_ok
                                      small corpora written in the published layouts users bring
                                      (data/tools/format_fixtures.py: LLaMA-Factory, ms-swift,
                                      Qwen's demo, LLaVA, OpenAI chats, HF parquet): how many,
                                      and how many read with every medium and turn in place

Image sizes: log-uniform sides, aspect ratios up to 200:1, 3 budgets. Run with no arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.encode import SampleEncoder, VisionBudget  # noqa: E402
from data.planner import TokenPlanner, image_grid, processor_grid, processor_video_tokens  # noqa: E402
from data.processor import build_processor  # noqa: E402
from data.sources import load_llava_json  # noqa: E402
from data.tools.synthetic import generate, write_grey_video  # noqa: E402
from data.media.video import VideoInfo, VideoRef  # noqa: E402

BUDGETS = [VisionBudget(32 * 32 * 4, 32 * 32 * 64), VisionBudget(64 * 64, 256 * 256),
           VisionBudget(256 * 256, 1024 * 1024)]
VIDEO_BUDGETS = [VisionBudget(), VisionBudget(fps=0.5, min_frames=2, max_frames=16),
                 VisionBudget(fps=10, max_frames=48, video_total_pixels=32 * 32 * 64 * 8),
                 VisionBudget(num_frames=16, video_min_pixels=32 * 32, video_max_pixels=32 * 32 * 16),
                 VisionBudget(fps=0.1, min_frames=3, max_frames=9, video_max_pixels=32 * 32 * 256,
                              video_total_pixels=32 * 32 * 256 * 4)]


def random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng, sizes = random.Random(seed), []
    while len(sizes) < n:
        short = int(math.exp(rng.uniform(0, math.log(1500))))
        aspect = math.exp(rng.uniform(0, math.log(200)))
        long = max(short, min(int(short * aspect), 8000))
        if short * long <= 3_000_000 and long / short <= 200:
            sizes.append((short, long) if rng.random() < 0.5 else (long, short))
    return sizes


def random_videos(n: int, seed: int) -> list[tuple[VideoInfo, VideoRef]]:
    """Header facts of random videos (frame size up to 250k pixels so the processor reference,
    which decodes blank frames, stays quick) with, for some, a record's fps / nframes, and some
    frame lists (their rate: the record's sample_fps, default 2)."""
    rng, videos = random.Random(seed), []
    while len(videos) < n:
        short = int(math.exp(rng.uniform(math.log(2), math.log(600))))
        long = int(short * math.exp(rng.uniform(0, math.log(200))))
        if short * long > 250_000:
            continue
        height, width = (short, long) if rng.random() < 0.5 else (long, short)
        fps = rng.choice([5, 12, 23.976, 24, 25, 29.97, 30, 50, 59.94, 60])
        seconds = math.exp(rng.uniform(math.log(0.1), math.log(3600)))
        info, ref = VideoInfo(max(1, round(seconds * fps)), fps, height, width), VideoRef("v.mp4")
        kind = rng.random()
        if kind < 0.15:
            ref = VideoRef("v.mp4", fps=rng.choice([0.2, 1.0, 4.0, 10.0]))
        elif kind < 0.3:
            ref = VideoRef("v.mp4", num_frames=rng.randint(2, 48))
        elif kind < 0.45:
            frame_fps = rng.choice([None, 0.5, 1.0, 3.0])
            ref = VideoRef(("f.png",) * 2, frame_fps=frame_fps)
            info = VideoInfo(rng.randint(1, 80), frame_fps or 2.0, height, width)
        videos.append((info, ref))
    return videos


def write_video_samples(root: Path, n: int, seed: int) -> Path:
    """A LLaVA JSON of ``n`` one-video samples: real clips (mp4 / mkv / webm) of random frame
    size, frame rate and length, each sampled by its own fps or nframes now and then."""
    rng, records = random.Random(seed), []
    for i in range(n):
        ext, codec = rng.choice([("mp4", "mpeg4"), ("mkv", "libx264"), ("webm", "libvpx-vp9")])
        width, height = 2 * rng.randint(8, 160), 2 * rng.randint(8, 120)
        fps, frames = rng.choice([5, 10, 24, 25, 30]), rng.randint(1, 120)
        path = root / f"clip{i}.{ext}"
        write_grey_video(path, frames, fps, codec, width, height, level_step=7)
        extra = rng.choice([{}, {}, {"fps": rng.choice([0.5, 4.0])}, {"nframes": rng.randint(2, 12)}])
        records.append({"id": f"clip{i}", "video": path.name, **extra, "conversations": [
            {"from": "human", "value": "<video>\nWhat changes?"},
            {"from": "gpt", "value": "It gets brighter."}]})
    data = root / "videos.json"
    data.write_text(json.dumps(records))
    return data


def hf_processor_rate(processor, encoder, samples) -> tuple[float, bool]:
    """Samples/s of the stock HF path (chat template + processor, images named in the
    messages), and whether it produces our encoder's tensors."""
    def hf_messages(sample):
        refs = iter(sample.images)
        return [{"role": m["role"], "content": [
            {"type": "image", "path": next(refs)} if p["type"] == "image" else p
            for p in m["content"]]} for m in sample.messages]

    kwargs = encoder.budget.images_kwargs()

    def hf_encode(sample):
        return processor.apply_chat_template(hf_messages(sample), tokenize=True, return_dict=True,
                                             return_tensors="pt",
                                             processor_kwargs={"images_kwargs": kwargs})

    for s in samples[:20]:
        hf_encode(s)
    t0 = time.perf_counter()
    outs = [hf_encode(s) for s in samples]
    rate = len(samples) / (time.perf_counter() - t0)
    identical = True
    for sample, out in zip(samples[:50], outs):
        ours = encoder.encode(sample)
        identical &= torch.equal(out["input_ids"][0], ours["input_ids"])
        identical &= torch.equal(out["image_grid_thw"], ours["image_grid_thw"])
        identical &= torch.equal(out["pixel_values"], ours["pixel_values"])
    return rate, identical


def prepared_read_rate(processor, train: Path, budget: VisionBudget) -> float:
    """Samples/s of PreparedDataset items (tensors and sample id, as training reads them) from
    a cache of ``train`` prepared at ``budget``; the cache is checked against the encoder."""
    from data.config import DataConfig
    from data.prepared import PreparedDataset
    from data.tools.prepare import run as prepare

    out = Path(tempfile.mkdtemp(prefix="bench_prepared-"))
    cfg = DataConfig(train=str(train), vision=budget)
    prepare(cfg, processor, "", out, progress=False)
    cache = PreparedDataset(out)
    encoder, samples = SampleEncoder(processor, budget), load_llava_json(train)
    first = encoder.encode(samples[0])
    assert all(torch.equal(first[k], v) for k, v in cache[0].items()), "cache != encoder"
    t0 = time.perf_counter()
    for i in range(len(cache)):
        cache[i], cache.sample_id(i)
    return len(cache) / (time.perf_counter() - t0)


def write_mixed_corpus(root: Path, n: int, seed: int) -> Path:
    """``n`` LLaVA samples mixing text-only, 1-3 images of random sizes (a pool of 40 files)
    and short to long turns: a corpus whose lengths vary like a real SFT mixture."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    pool = []
    for i, (h, w) in enumerate(random_sizes(40, seed)):
        h, w = max(8, min(h, 1600)), max(8, min(w, 1600))
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / f"mix{i}.png")
        pool.append(f"mix{i}.png")
    words = "the a image shows left right of colour shape count number red blue".split()
    records = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 1, 2, 3])
        question = " ".join(rng.choice(words) for _ in range(int(math.exp(rng.uniform(1, 6)))))
        answer = " ".join(rng.choice(words) for _ in range(int(math.exp(rng.uniform(0, 6)))))
        records.append({"id": f"mix{i}", "image": [rng.choice(pool) for _ in range(k)],
                        "conversations": [{"from": "human", "value": "<image>" * k + question},
                                          {"from": "gpt", "value": answer}]})
    path = root / "mixed.json"
    path.write_text(json.dumps(records))
    return path


def packing_figures(processor, videos, n: int, capacity: int = 16384) -> dict:
    from data.mixture import Mixture
    from train.data import BatchPlan

    budget = VisionBudget(64 * 64, 1024 * 1024)
    planner = TokenPlanner(processor, budget)
    samples = load_llava_json(write_mixed_corpus(Path(tempfile.mkdtemp(prefix="bench_mix-")), n, 0))
    lengths = [planner.plan(s).total for s in samples] + [planner.plan(v).total for v in videos]
    mixture = Mixture([len(lengths)], [1.0], seed=0)
    rows = BatchPlan(mixture, 1, 0, lengths, pack_tokens=capacity).epoch(0)
    per_row = max(1, round(len(lengths) / len(rows)))  # the baseline sees as many samples per step

    def padding(batches):
        return sum(lengths[i] for b in batches for i in b) / sum(
            len(b) * max(lengths[i] for i in b) for b in batches)

    plain = BatchPlan(mixture, per_row, 0, lengths).epoch(0)
    grouped = BatchPlan(mixture, per_row, 0, lengths, group_by_length=True).epoch(0)
    return {"mixed_samples": len(lengths), "mixed_mean_tokens": round(sum(lengths) / len(lengths)),
            "pack_tokens": capacity, "packed_rows": len(rows),
            "packing_efficiency": round(sum(lengths) / (len(rows) * capacity), 4),
            "padding_batch_size": per_row, "padding_efficiency": round(padding(plain), 4),
            "grouped_padding_efficiency": round(padding(grouped), 4)}


def bad_input_figures(processor) -> dict:
    from data.config import DataConfig
    from data.tools.faults import audit, tally, write_faulty_corpus

    sources, expected = write_faulty_corpus(Path(tempfile.mkdtemp(prefix="bench_faulty-")))
    counts = tally(audit(DataConfig(sources=sources), processor), expected)
    if counts["missed"]:
        print(f"bad input not handled: {', '.join(counts['missed'])}", file=sys.stderr)
    return {"bad_input_kinds": counts["kinds"], "bad_input_reported": counts["handled"],
            "bad_input_crashes": counts["crashes"]}


def format_fixture_figures() -> dict:
    from data.tools.format_fixtures import check_fixture, write_format_fixtures

    fixtures = write_format_fixtures(Path(tempfile.mkdtemp(prefix="bench_formats-")))
    failed = {}
    for fixture in fixtures:
        problems = check_fixture(fixture)
        if problems:
            failed[fixture.name] = problems
    for name, problems in failed.items():
        print(f"format fixture {name}: {'; '.join(problems)}", file=sys.stderr)
    return {"real_format_fixtures": len(fixtures),
            "real_format_fixtures_ok": len(fixtures) - len(failed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--video-cases", type=int, default=150)
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--video-samples", type=int, default=24)
    parser.add_argument("--mixed-samples", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    processor = build_processor()

    mismatches = 0
    for i, (h, w) in enumerate(random_sizes(args.cases, seed=0)):
        budget = BUDGETS[i % len(BUDGETS)]
        mismatches += image_grid(h, w, budget) != processor_grid(processor, h, w, budget)
    video_mismatches = 0
    video_planner = TokenPlanner(processor, VIDEO_BUDGETS[0])
    for i, (info, ref) in enumerate(random_videos(args.video_cases, seed=0)):
        video_planner.budget = budget = VIDEO_BUDGETS[i % len(VIDEO_BUDGETS)]
        video_mismatches += (video_planner.video_tokens(info, ref)
                             != processor_video_tokens(processor, info, budget, ref))

    corpus = generate(Path(tempfile.mkdtemp(prefix="bench_data-")), train_per_task=args.samples // 3,
                      eval_per_task=0)
    samples = load_llava_json(corpus["train"])
    budget = VisionBudget(64 * 64, 256 * 256)
    planner, encoder = TokenPlanner(processor, budget), SampleEncoder(processor, budget)
    t0 = time.perf_counter()
    plans = [planner.plan(s) for s in samples]
    plan_rate = len(samples) / (time.perf_counter() - t0)
    for s in samples[:20]:  # warm-up (first calls build caches), as for the HF path below
        encoder.encode(s)
    t0 = time.perf_counter()
    lengths = [len(encoder.encode(s)["input_ids"]) for s in samples]
    encode_rate = len(samples) / (time.perf_counter() - t0)
    sample_mismatches = sum(p.total != n for p, n in zip(plans, lengths))
    videos = load_llava_json(write_video_samples(Path(tempfile.mkdtemp(prefix="bench_video-")),
                                                 args.video_samples, seed=0))
    video_sample_mismatches = sum(planner.plan(s).total != len(encoder.encode(s)["input_ids"])
                                  for s in videos)

    print(f"planner_cases={args.cases + args.video_cases}")
    print(f"planner_mismatches={mismatches + video_mismatches}")
    print(f"video_planner_cases={args.video_cases}")
    print(f"video_planner_mismatches={video_mismatches}")
    print(f"planner_sample_mismatches={sample_mismatches + video_sample_mismatches}")
    print(f"video_planner_sample_mismatches={video_sample_mismatches}")
    print(f"planner_samples_per_s={plan_rate:.1f}")
    print(f"encode_samples_per_s={encode_rate:.1f}")
    read_rate = prepared_read_rate(processor, corpus["train"], budget)
    print(f"prepared_read_samples_per_s={read_rate:.1f}")
    print(f"prepared_read_vs_encode_speedup={read_rate / encode_rate:.1f}")
    hf_rate, identical = hf_processor_rate(processor, encoder, samples)
    print(f"hf_processor_samples_per_s={hf_rate:.1f}")
    print(f"hf_processor_identical={int(identical)}")
    for name, value in packing_figures(processor, videos, args.mixed_samples).items():
        print(f"{name}={value}")
    for name, value in bad_input_figures(processor).items():
        print(f"{name}={value}")
    for name, value in format_fixture_figures().items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
