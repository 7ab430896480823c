"""Video: sources read video files and frame lists, the planner counts video tokens (visual and
timestamp text) from headers exactly as the processor expands them, encoded video samples train
the tiny model, and broken videos become bad samples that name the file."""

from __future__ import annotations

import math
import random
import re

import pytest
import torch
from PIL import Image

from data.media import video as video_lib
from data.config import VisionBudget
from data.encode import SampleEncoder, collate
from data.planner import TokenPlanner, processor_video_tokens
from data.samples import BadSampleLog, DataError
from data.sources import load_source
from data.tools.synthetic import write_grey_video
from tests.helpers.files import write_json, write_jsonl

FRAME_W, FRAME_H = 64, 48


def write_video(path, n_frames=31, fps=10, codec="mpeg4", width=FRAME_W, height=FRAME_H, gop=None):
    """Frame i is a flat grey of level 8 * i (mod 256), so a decoded frame tells its index."""
    return write_grey_video(path, n_frames, fps, codec, width, height, gop=gop)


def llava(video, question="What happens?", answer="A fade.", **extra):
    return {"id": "v", "video": video, **extra,
            "conversations": [{"from": "human", "value": question},
                              {"from": "gpt", "value": answer}]}


def timestamps_in(processor, ids) -> list[str]:
    return re.findall(r"<(\d+\.\d) seconds>", processor.tokenizer.decode(ids))


# --------------------------------------------------------------------------------------------
# Planner vs the processor


def random_video_cases(n: int, seed: int):
    """(VideoInfo, budget, ref): log-uniform sides (aspect up to 200:1, small areas so the
    processor reference stays fast), durations 0.1 s - 10 min, common frame rates, and budgets
    sampling by fps or num_frames, with per-record overrides and frame lists."""
    rng = random.Random(seed)
    budgets = [VisionBudget(),
               VisionBudget(fps=0.5, min_frames=2, max_frames=16),
               VisionBudget(fps=10, max_frames=32, video_total_pixels=32 * 32 * 64 * 4),
               VisionBudget(num_frames=8, video_min_pixels=32 * 32, video_max_pixels=32 * 32 * 16),
               VisionBudget(num_frames=13, min_frames=6, max_frames=20),
               VisionBudget(fps=0.1, min_frames=3, max_frames=9,
                            video_max_pixels=32 * 32 * 256, video_total_pixels=32 * 32 * 256 * 3)]
    cases = []
    while len(cases) < n:
        short = int(math.exp(rng.uniform(math.log(2), math.log(400))))
        aspect = math.exp(rng.uniform(0, math.log(200)))
        long = max(short, int(short * aspect))
        if long > 200 * short or short * long > 120_000:
            continue
        height, width = (short, long) if rng.random() < 0.5 else (long, short)
        fps = rng.choice([5, 7.5, 12, 23.976, 24, 25, 29.97, 30, 59.94, 60])
        seconds = math.exp(rng.uniform(math.log(0.1), math.log(600)))
        info = video_lib.VideoInfo(max(1, round(seconds * fps)), fps, height, width)
        kind = rng.random()
        if kind < 0.15:
            ref = video_lib.VideoRef("clip.mp4", fps=rng.choice([0.25, 1, 3.5, 7]))
        elif kind < 0.3:
            ref = video_lib.VideoRef("clip.mp4", num_frames=rng.randint(2, 40))
        elif kind < 0.45:  # a frame list: its rate is the record's sample_fps (default 2)
            frame_fps = rng.choice([None, 0.5, 1, 4])
            ref = video_lib.VideoRef(("f0.png",) * 2, frame_fps=frame_fps)
            info = video_lib.VideoInfo(rng.randint(1, 70), frame_fps or 2.0, height, width)
        else:
            ref = video_lib.VideoRef("clip.mp4")
        cases.append((info, rng.choice(budgets), ref))
    return cases


def test_video_tokens_match_processor_on_random_shapes(processor):
    torch.set_num_threads(1)
    planner = TokenPlanner(processor, VisionBudget())
    cases = random_video_cases(120, seed=0)
    mismatches = []
    for info, budget, ref in cases:
        planner.budget = budget
        expected = processor_video_tokens(processor, info, budget, ref)
        got = planner.video_tokens(info, ref)
        if got != expected:
            mismatches.append((info, budget, ref, got, expected))
    assert not mismatches, mismatches[:3]
    # The cases reach the budget's corners: extreme aspect ratios, 2-frame and 64-frame plans.
    aspects = [max(i.height, i.width) / min(i.height, i.width) for i, _, _ in cases]
    counts = {video_lib.frame_count(i, b, r) for i, b, r in cases}
    assert max(aspects) > 100 and min(counts) == 2 and max(counts) == 64


# --------------------------------------------------------------------------------------------
# Frame sampling rules


def test_frame_count_follows_budget_and_overrides():
    info = video_lib.VideoInfo(total_frames=300, fps=30.0, height=48, width=64)  # 10 s
    file_ref = video_lib.VideoRef("clip.mp4")
    assert video_lib.frame_count(info, VisionBudget(), file_ref) == 20  # 2 fps x 10 s
    assert video_lib.frame_count(info, VisionBudget(fps=0.1), file_ref) == 4  # min_frames
    assert video_lib.frame_count(info, VisionBudget(fps=10, max_frames=33), file_ref) == 32
    assert video_lib.frame_count(info, VisionBudget(num_frames=7), file_ref) == 8  # even
    assert video_lib.frame_count(info, VisionBudget(num_frames=7),
                                 video_lib.VideoRef("clip.mp4", fps=1)) == 10  # record fps wins
    assert video_lib.frame_count(info, VisionBudget(),
                                 video_lib.VideoRef("clip.mp4", num_frames=6)) == 6
    short = video_lib.VideoInfo(total_frames=3, fps=30.0, height=48, width=64)
    assert video_lib.frame_count(short, VisionBudget(), file_ref) == 2  # never past the video
    assert video_lib.frame_indices(1, 2) == (0, 0)  # one frame fills the temporal patch
    frames = video_lib.VideoRef(("a.png",) * 5)
    five = video_lib.VideoInfo(total_frames=5, fps=2.0, height=48, width=64)
    assert video_lib.frame_count(five, VisionBudget(), frames) == 6  # every frame, last repeated
    assert video_lib.frame_indices(5, 6) == (0, 1, 2, 3, 4, 4)


def test_frame_size_keeps_per_frame_and_total_budgets():
    budget = VisionBudget(video_min_pixels=32 * 32 * 4, video_max_pixels=32 * 32 * 64,
                          video_total_pixels=32 * 32 * 64 * 8)
    h, w = video_lib.frame_size(1080, 1920, 8, budget)
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 32 * 32 * 64 and abs(w / h - 16 / 9) < 0.2
    h32, w32 = video_lib.frame_size(1080, 1920, 32, budget)  # 32 frames share the total
    assert h32 * w32 * 32 <= budget.video_total_pixels and h32 * w32 < h * w
    hs, ws = video_lib.frame_size(20, 30, 8, budget)  # tiny frames grow to the minimum
    assert hs * ws >= budget.video_min_pixels


# --------------------------------------------------------------------------------------------
# Sources, encoding, planning and training on real files


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """31 frames at 10 fps (3.1 s) as mp4 (mpeg4)."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


CONTAINER_CLIPS = [("a.mp4", "mpeg4"), ("b.mkv", "libx264"), ("c.webm", "libvpx-vp9"),
                   ("d.avi", "mpeg4"), ("e.mov", "mpeg4")]
GOP_CLIPS = [("g.mp4", "libx264"), ("g.mkv", "libx264"), ("g.webm", "libvpx-vp9")]


def test_probe_reads_headers_of_each_container(tmp_path):
    for name, codec in CONTAINER_CLIPS:
        path = write_video(tmp_path / name, n_frames=24, fps=12, codec=codec)
        info = video_lib.probe(video_lib.VideoRef(str(path)))
        assert info == video_lib.VideoInfo(24, 12.0, FRAME_H, FRAME_W), name


def decode_every_frame(path, frame_plan) -> torch.Tensor:
    """The reference for ``decode``: every frame decoded in order, and planned index i takes
    the first frame whose index (presentation time x fps; position without pts) reaches i."""
    import av

    targets, frames = sorted(set(frame_plan.indices)), {}
    size = (frame_plan.height, frame_plan.width)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for position, frame in enumerate(container.decode(video=0)):
            index = position if frame.pts is None else round(
                float((frame.pts - start) * stream.time_base) * frame_plan.fps)
            while targets and targets[0] <= index:
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                frames[targets.pop(0)] = video_lib._resize(pixels, size)
    last = frames[max(frames)]
    return torch.stack([frames.get(i, last) for i in frame_plan.indices])


@pytest.fixture(scope="module")
def clips(clip, tmp_path_factory):
    """Every clip the tests decode (containers, codecs, short and long groups of pictures)."""
    root = tmp_path_factory.mktemp("clips")
    clips = [clip, write_video(root / "long.mkv", n_frames=60, fps=20, codec="libx264"),
             write_video(root / "gop250.mp4", n_frames=300, fps=30, codec="libx264")]
    clips += [write_video(root / name, n_frames=24, fps=12, codec=codec)
              for name, codec in CONTAINER_CLIPS]
    clips += [write_video(root / name, n_frames=90, fps=30, codec=codec, gop=6)
              for name, codec in GOP_CLIPS]
    return clips


def frame_plans(path, seed: int) -> list:
    """Plans for a clip: even spreads of 2 frames to all of them, random sets of indices, and
    plans from a header that promised more frames than there are."""
    info = video_lib.probe(video_lib.VideoRef(str(path)))
    n, rng = info.total_frames, random.Random(seed)
    spreads = [video_lib.frame_indices(n, k) for k in (2, 6, 16, n)]
    spreads += [tuple(sorted(rng.sample(range(n), rng.randint(1, n)))) for _ in range(3)]
    spreads += [video_lib.frame_indices(n + 12, 8)]
    return [video_lib.FramePlan(indices, 32, 32, info.fps, n) for indices in spreads]


def test_seeking_decode_equals_decoding_every_frame(clips):
    for seed, path in enumerate(clips):
        for frame_plan in frame_plans(path, seed):
            got = video_lib.decode(video_lib.VideoRef(str(path)), frame_plan)
            assert got.dtype == torch.uint8
            assert torch.equal(got, decode_every_frame(path, frame_plan)), (path.name, frame_plan)


def test_seeking_skips_groups_of_pictures_without_planned_frames(tmp_path, monkeypatch):
    decoded, frames_from = [], video_lib._decoded_frames

    def counted(container, stream):
        for frame in frames_from(container, stream):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_lib, "_decoded_frames", counted)
    for name, codec in GOP_CLIPS:
        path = write_video(tmp_path / name, n_frames=90, fps=30, codec=codec, gop=6)
        ref = video_lib.VideoRef(str(path))
        plan = video_lib.plan(video_lib.probe(ref), VisionBudget(num_frames=6), ref)
        assert plan.indices == (0, 18, 36, 53, 71, 89)
        decoded.clear()
        frames = video_lib.decode(ref, plan)
        assert len(decoded) < 60, (name, len(decoded))
        assert torch.equal(frames, decode_every_frame(path, plan)), name
        levels = frames.float().mean(dim=(1, 2, 3))
        assert torch.allclose(levels, torch.tensor([8.0 * i % 256 for i in plan.indices]), atol=3)


class SeekTrouble:
    """A PyAV input container whose seek fails (``"error"``) or lands a second later than asked
    (``"late"``, so past the frame wanted)."""

    def __init__(self, container, trouble: str):
        self.container, self.trouble = container, trouble

    def __getattr__(self, name):
        return getattr(self.container, name)

    def __enter__(self):
        self.container.__enter__()
        return self

    def __exit__(self, *exc):
        return self.container.__exit__(*exc)

    def seek(self, offset, *, stream, backward=True):
        import av

        if self.trouble == "error":
            raise av.FFmpegError(22, "Invalid argument")
        self.container.seek(offset + int(1 / stream.time_base), stream=stream, backward=backward)


@pytest.mark.parametrize("trouble", ["error", "late"])
def test_failed_seek_falls_back_to_decoding_from_the_start(trouble, tmp_path, monkeypatch):
    import av

    path = write_video(tmp_path / "g.mkv", n_frames=90, fps=30, codec="libx264", gop=6)
    opened, open_file = [], av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opened.append(args[0]) or SeekTrouble(
        open_file(*args, **kwargs), trouble))
    plan = video_lib.FramePlan((0, 18, 36, 53, 71, 89), 48, 64, 30.0, 90)
    frames = video_lib.decode(video_lib.VideoRef(str(path)), plan)
    assert len(opened) == 2  # the seeking pass, then the rest from the start
    monkeypatch.setattr(av, "open", open_file)
    assert torch.equal(frames, decode_every_frame(path, plan))


def test_encoded_mp4_sample_timestamps_frames_and_plan(processor, clip, tmp_path):
    data = write_json(tmp_path / "train.json", [llava(str(clip), "<video>\nWhat happens?")])
    budget = VisionBudget(num_frames=4)
    (sample,) = load_source("llava_json", data)
    assert sample.messages[0]["content"][0] == {"type": "video"}

    # Frames 0, 10, 20, 30 of 31 (10 fps): patches at (0.0+1.0)/2 s and (2.0+3.0)/2 s.
    frames, metadata, filled = video_lib.load(sample.videos[0], budget)
    assert metadata.frames_indices == [0, 10, 20, 30] and metadata.fps == 10.0 and filled == 0
    levels = frames.float().mean(dim=(1, 2, 3))
    assert torch.allclose(levels, torch.tensor([0.0, 80.0, 160.0, 240.0]), atol=4)

    encoded = SampleEncoder(processor, budget).encode(sample)
    ids = encoded["input_ids"]
    assert timestamps_in(processor, ids) == ["0.5", "2.5"]
    # Qwen3-VL's layout: each temporal patch is "<t seconds><|vision_start|>pads<|vision_end|>",
    # with no extra start/end around the whole video (transformers 5.23 alone would add one).
    text = processor.tokenizer.decode(ids)
    pads = "<|video_pad|>" * 4
    assert (f"user\n<0.5 seconds><|vision_start|>{pads}<|vision_end|>"
            f"<2.5 seconds><|vision_start|>{pads}<|vision_end|>\nWhat happens?") in text
    assert encoded["video_grid_thw"].tolist() == [[2, 4, 4]]  # 64x48 -> 64x64 (min pixels)
    n_video = int((ids == processor.video_token_id).sum())
    assert n_video == 2 * 2 * 2
    assert encoded["pixel_values_videos"].shape == (2 * 4 * 4, 3 * 2 * 16 * 16)
    assert (encoded["mm_token_type_ids"] == 2).sum() == n_video
    assert ((encoded["mm_token_type_ids"] == 2) == (ids == processor.video_token_id)).all()

    plan = TokenPlanner(processor, budget).plan(sample)
    assert plan.total == len(ids) and plan.visual_tokens == n_video


def test_planner_equals_encoding_across_budgets_and_sources(processor, clip, tmp_path):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i in (1, 2, 10, 3, 4):  # natural order: 1 2 3 4 10
        Image.new("RGB", (80, 40), (20 * i, 0, 0)).save(frames_dir / f"frame_{i}.png")
    records = [
        {"id": "m1", "messages": [
            {"role": "user", "content": [{"type": "video", "video": str(clip), "fps": 3},
                                         {"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": "A fade."}]},
        {"id": "m2", "messages": [
            {"role": "user", "content": [{"type": "video", "video": str(frames_dir)},
                                         {"type": "video_url", "video_url": {"url": f"file://{clip}"},
                                          "nframes": 6},
                                         {"type": "text", "text": "Compare."}]},
            {"role": "assistant", "content": "Same."}]},
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    samples = load_source("messages", data)
    assert [len(s.videos) for s in samples] == [1, 2]
    assert [p.rsplit("_", 1)[1] for p in samples[1].videos[0].source] == \
        ["1.png", "2.png", "3.png", "4.png", "10.png"]
    for budget in (VisionBudget(), VisionBudget(num_frames=6, video_max_pixels=32 * 32 * 8)):
        planner, encoder = TokenPlanner(processor, budget), SampleEncoder(processor, budget)
        for sample in samples:
            encoded = encoder.encode(sample)
            assert planner.plan(sample).total == len(encoded["input_ids"]), (sample.id, budget)
    # Frame folder at the default 2 fps: 5 frames + the last repeated, patches at 0.25 / 1.25 /
    # 2.0 s (printed as the processor formats them); then the clip: 6 frames of 31 at 10 fps.
    encoded = SampleEncoder(processor, VisionBudget()).encode(samples[1])
    assert timestamps_in(processor, encoded["input_ids"]) == ["0.2", "1.2", "2.0", "0.3", "1.5", "2.7"]


def test_frame_list_rate_from_record(processor, clip, tmp_path):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (64, 64), (0, 50 * i, 0)).save(paths[-1])
    data = write_json(tmp_path / "train.json",
                      [llava([str(clip), str(clip)], "<video><video>\nWhich?"),
                       {**llava([paths], "<video>\nWhich?"), "sample_fps": 1}])
    two_videos, one_video = load_source("llava_json", data)
    assert [v.source for v in two_videos.videos] == [str(clip)] * 2  # a list: one video each
    assert one_video.videos[0].source == tuple(paths)  # a nested list: the frames of one video
    encoded = SampleEncoder(processor, VisionBudget()).encode(one_video)
    assert timestamps_in(processor, encoded["input_ids"]) == ["0.5", "2.5"]  # 1 s apart


def test_untagged_video_is_placed_before_the_question(clip, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    data = write_json(tmp_path / "train.json", [{**llava(str(clip)), "image": str(image)}])
    (sample,) = load_source("llava_json", data)
    kinds = [p["type"] for p in sample.messages[0]["content"]]
    assert kinds == ["image", "video", "text"]


def test_tiny_model_trains_on_encoded_video(tiny, processor, clip, tmp_path):
    from transformers import AutoModelForImageTextToText

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 96), (200, 10, 10)).save(image)
    data = write_json(tmp_path / "train.json",
                      [llava(str(clip), "<video>\nWhat happens?", id="v1"),
                       {**llava(str(clip), "<image>\n<video>\nSame?", "Yes.", fps=5),
                        "id": "v2", "image": str(image)}])
    encoder = SampleEncoder(processor, VisionBudget())
    examples = [encoder.encode(s) for s in load_source("llava_json", data)]
    batch = collate(examples, processor.tokenizer.pad_token_id)
    assert torch.equal(batch["video_grid_thw"],
                       torch.cat([e["video_grid_thw"] for e in examples]))
    assert torch.equal(batch["pixel_values_videos"],
                       torch.cat([e["pixel_values_videos"] for e in examples]))
    assert batch["pixel_values"].shape[0] == examples[1]["pixel_values"].shape[0]

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(str(tiny["dense"]))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    grads = [p.grad for p in model.model.visual.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_batched_generation_with_videos_equals_one_at_a_time(tiny, processor, clip, tmp_path):
    from transformers import AutoModelForImageTextToText

    long_clip = write_video(tmp_path / "long.mkv", n_frames=60, fps=20, codec="libx264")
    data = write_json(tmp_path / "eval.json",
                      [llava(str(clip), "<video>\nQ?", id="a"),
                       llava(str(long_clip), "A longer question first. <video>\nQ?", id="b")])
    samples = load_source("llava_json", data)
    encoder, pad = SampleEncoder(processor, VisionBudget()), processor.tokenizer.pad_token_id
    model = AutoModelForImageTextToText.from_pretrained(str(tiny["dense"]))
    prompts = [encoder.encode_prompt(s) for s in samples]
    batch = collate(prompts, pad, padding_side="left")
    batched = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, -4:]
    for prompt, row in zip(prompts, batched):
        alone = model.generate(**collate([prompt], pad, padding_side="left"), max_new_tokens=4,
                               do_sample=False)[0, -4:]
        assert torch.equal(alone, row)


# --------------------------------------------------------------------------------------------
# Bad input


def test_broken_videos_are_reported_with_the_file(clip, tmp_path):
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4000)))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    png = tmp_path / "still.mp4"
    Image.new("RGB", (32, 32)).save(png, format="PNG")
    undecodable = write_video(tmp_path / "undecodable.mp4", codec="libx264")
    blob = bytearray(undecodable.read_bytes())  # keep the header, zero every packet
    at = blob.find(b"mdat")
    size = int.from_bytes(blob[at - 4:at], "big")
    blob[at + 4:at - 4 + size] = bytes(size - 8)
    undecodable.write_bytes(bytes(blob))
    frames_missing = [str(tmp_path / "f0.png"), str(tmp_path / "f1.png")]
    Image.new("RGB", (32, 32)).save(frames_missing[0])

    cases = {
        "zero": (llava(str(zero)), "unreadable video file (empty, 0 bytes)", zero),
        "corrupt": (llava(str(corrupt)), "unreadable video file", corrupt),
        "text": (llava(str(text)), "unreadable video file", text),
        "png": (llava(str(png)), "not a video file", png),
        "undecodable": (llava(str(undecodable)), "no decodable frame", undecodable),
        "missing": (llava("nowhere.mp4"), "video file not found", "nowhere.mp4"),
        "frames": (llava([frames_missing]), "video frame not found", frames_missing[1]),
        "tags": (llava(str(clip), "<video><video>\nTwo?"), "2 <video> tags but 1 videos", None),
        "both": (llava(str(clip), fps=1, nframes=4), "either fps or nframes", None),
        "remote": (llava("https://example.com/a.mp4"), "remote video URLs are not fetched", None),
    }
    records = [{**record, "id": name} for name, (record, _, _) in cases.items()]
    data = write_json(tmp_path / "train.json", records + [llava(str(clip), id="good")])
    bad = BadSampleLog("skip")
    samples = load_source("llava_json", data, bad=bad)
    assert [s.id for s in samples] == ["good"]
    reasons = {r.sample_id: r for r in bad.records}
    assert sorted(reasons) == sorted(cases)
    for name, (_, expected, path) in cases.items():
        record = reasons[name]
        assert expected in record.reason, (name, record.reason)
        assert path is None or str(path) in record.reason, (name, record.reason)
        assert record.file == str(data) and record.index == records.index(
            next(r for r in records if r["id"] == name))
    with pytest.raises(DataError, match="zero.mp4"):
        load_source("llava_json", data)  # policy "error": the first bad sample stops the run


def test_messages_video_part_problems(clip, tmp_path):
    def record(part, role="user"):
        return {"messages": [{"role": role, "content": [part, {"type": "text", "text": "Q"}]},
                             {"role": "assistant", "content": "A"}]}

    records = [record({"type": "video", "video": str(clip), "fps": 50}),
               record({"type": "video", "video": [str(clip)], "fps": 1}),
               record({"type": "video", "video": 7}),
               record({"type": "video", "video": str(clip)}, role="assistant")]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    bad = BadSampleLog("skip")
    assert load_source("messages", data, bad=bad) == []
    reasons = [r.reason for r in bad.records]
    assert "fps must be in [0.1, 10]" in reasons[0] and "(message 0)" in reasons[0]
    assert "give sample_fps" in reasons[1]
    assert "a path or a non-empty list of frame paths" in reasons[2]
    assert "only read in user turns" in reasons[3]


def test_video_that_breaks_after_loading_fails_encoding_with_the_file(processor, clip, tmp_path):
    path = tmp_path / "later.mp4"
    path.write_bytes(clip.read_bytes())
    data = write_json(tmp_path / "train.json", [llava(str(path))])
    (sample,) = load_source("llava_json", data)
    path.write_bytes(b"gone")  # replaced on disk between loading and encoding
    with pytest.raises(ValueError, match="later.mp4"):
        SampleEncoder(processor, VisionBudget()).encode(sample)
