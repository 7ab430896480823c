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
from data.synthetic import generate  # noqa: E402
from data.video import VideoInfo, VideoRef  # noqa: E402

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
    import av
    import numpy as np

    rng, records = random.Random(seed), []
    for i in range(n):
        ext, codec = rng.choice([("mp4", "mpeg4"), ("mkv", "libx264"), ("webm", "libvpx-vp9")])
        width, height = 2 * rng.randint(8, 160), 2 * rng.randint(8, 120)
        fps, frames = rng.choice([5, 10, 24, 25, 30]), rng.randint(1, 120)
        path = root / f"clip{i}.{ext}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for k in range(frames):
                pixels = np.full((height, width, 3), 7 * k % 256, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        extra = rng.choice([{}, {}, {"fps": rng.choice([0.5, 4.0])}, {"nframes": rng.randint(2, 12)}])
        records.append({"id": f"clip{i}", "video": path.name, **extra, "conversations": [
            {"from": "human", "value": "<video>\nWhat changes?"},
            {"from": "gpt", "value": "It gets brighter."}]})
    data = root / "videos.json"
    data.write_text(json.dumps(records))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--video-cases", type=int, default=150)
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--video-samples", type=int, default=24)
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


if __name__ == "__main__":
    main()
