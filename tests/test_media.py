"""Media references (data/media): paths stay under their data root, inline data URIs in both
spellings, every unusable image raises one MediaError naming the file (never a PIL type that
escapes the per-sample handling), EXIF orientation and video display rotation are applied as
viewers apply them, undecodable video frames are counted, and raw image bytes in parquet files
are images."""

from __future__ import annotations

import base64
import io
import os
import re
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data.config import VisionBudget
from data.media import images as images_lib
from data.media import video as video_lib
from data.media.images import MediaError, check, image_size, load_image, resolve
from data.samples import BadSampleLog
from data.sources import load_source
from data.tools.synthetic import write_grey_video
from tests.helpers.files import write_json
from tests.helpers.media_files import claimed_png, encoded, is_mark, marked_video


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def noise(size: tuple[int, int], fmt: str) -> bytes:
    """Incompressible pixels, so that cutting the file short loses image data."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def data_uri(data: bytes, header: str = "data:image/png;base64") -> str:
    return f"{header},{base64.b64encode(data).decode()}"


# --------------------------------------------------------------------------------------------
# 1. Paths stay under the data root; remote URLs are refused as such


def test_relative_paths_leading_out_of_the_root_are_refused(root, tmp_path):
    expected = (f"media path '../x.png' resolves outside the data root {root}; move the file "
                f"under it, or set allow_outside_root: true on the source")
    with pytest.raises(ValueError) as caught:
        resolve("../x.png", str(root))
    assert str(caught.value) == expected
    for ref in ("file://../x.png", "sub/../../x.png", "..", "../data2/x.png"):
        with pytest.raises(ValueError, match="resolves outside the data root"):
            resolve(ref, str(root))
    assert resolve("sub/../a.png", str(root)) == os.path.join(root, "sub/../a.png")
    assert resolve("file://a.png", str(root)) == os.path.join(root, "a.png")
    outside = str(tmp_path / "x.png")  # absolute: the user's explicit choice
    assert resolve(outside, str(root)) == outside
    assert resolve(f"file://{outside}", str(root)) == outside
    assert resolve("../x.png", str(root), confine=False) == os.path.join(root, "../x.png")


def test_confinement_is_lexical_so_symlinked_folders_stay_usable(root, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere)  # e.g. a dataset folder linked in from another disk
    assert resolve("link/a.png", str(root)) == os.path.join(root, "link/a.png")
    monkeypatch.chdir(tmp_path)  # a relative root is taken from the working directory
    with pytest.raises(ValueError, match=f"outside the data root {root}"):
        resolve("../x.png", "data")


def test_video_paths_are_confined_like_images(root, tmp_path):
    for value in ("../v.mp4", "file://../v.mp4", ["f0.png", "../f1.png"]):
        with pytest.raises(ValueError, match="resolves outside the data root"):
            video_lib.make_ref(value, str(root))
    ref = video_lib.make_ref(["f0.png", "../f1.png"], str(root), confine=False)
    assert ref.source == (os.path.join(root, "f0.png"), os.path.join(root, "../f1.png"))
    outside = str(tmp_path / "v.mp4")
    assert video_lib.make_ref(outside, str(root)).source == outside
    assert video_lib.make_ref("../v.mp4", str(root), None, False).source == \
        os.path.join(root, "../v.mp4")


def test_remote_urls_are_refused_without_the_data_folder_glued_on(root):
    for url in ("https://example.com/a.png", "http://x.org/b.jpg", "s3://bucket/c.png",
                "gs://bucket/d.png"):
        with pytest.raises(ValueError) as caught:
            resolve(url, str(root))
        assert str(caught.value) == (f"remote image URLs are not fetched: {url} (download the "
                                     f"files and use local paths)")
        assert check(url).startswith("remote image URLs are not fetched")
    with pytest.raises(ValueError) as caught:
        video_lib.make_ref("s3://bucket/v.mp4", str(root))
    assert str(caught.value) == ("remote video URLs are not fetched: s3://bucket/v.mp4 "
                                 "(download the files and use local paths)")
    assert str(root) not in str(caught.value)


def test_a_record_reaching_out_of_its_folder_is_a_bad_sample(root, tmp_path):
    (tmp_path / "outside.png").write_bytes(encoded((32, 32)))
    (root / "in.png").write_bytes(encoded((32, 32)))
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    data = write_json(root / "train.json",
                      [{"id": "out", "image": "../outside.png", "conversations": turns},
                       {"id": "in", "image": "in.png", "conversations": turns}])
    bad = BadSampleLog("skip")
    assert [s.id for s in load_source("llava_json", data, bad=bad)] == ["in"]
    (record,) = bad.records
    assert record.sample_id == "out" and "outside the data root" in record.reason


# --------------------------------------------------------------------------------------------
# 2. Inline images: both spellings, and messages that never quote a payload


def test_qwen_data_uri_without_subtype_is_an_inline_image():
    ref = data_uri(encoded((30, 10)), "data:image;base64")
    assert images_lib.is_inline(ref) and check(ref) is None and resolve(ref, "/nowhere") == ref
    assert image_size(ref) == (10, 30)
    assert load_image(ref).size == (30, 10)
    assert image_size(data_uri(encoded((30, 10)))) == (10, 30)  # with a subtype, as before


def test_messages_never_print_a_whole_base64_payload():
    junk = b"not an image " * 10_000
    ref = data_uri(junk)
    assert images_lib.short_ref(ref) == f"data:image/png;base64,...({len(ref.split(',')[1])} bytes)"
    assert len(images_lib.short_ref(ref)) <= 60
    with pytest.raises(MediaError) as caught:
        image_size(ref)
    message = str(caught.value)
    assert "not an image file" in message and len(message) < 200
    assert message.endswith(images_lib.short_ref(ref))
    bad_base64 = "data:image;base64," + "@" * 100_000
    assert "invalid base64" in check(bad_base64) and len(check(bad_base64)) < 200
    assert len(images_lib.short_ref("x" * 1000)) <= images_lib.SHORT_REF_CHARS


# --------------------------------------------------------------------------------------------
# 3. One error type for every unusable image, with the reason and the file


def test_each_unusable_image_raises_media_error_with_its_reason(tmp_path):
    cases = {
        "empty.png": (b"", "empty image file (0 bytes)"),
        "notes.png": (b"plain text, not pixels\n" * 4, "not an image file"),
        "cut.png": (noise((64, 48), "PNG")[:400], "truncated or corrupt image file"),
        "thin.png": (encoded((600, 2)), "image is 600x2, an aspect ratio past 200:1"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for read in (image_size, load_image, images_lib.inspect_image):
            with pytest.raises(MediaError) as caught:
                read(str(path))
            assert reason in str(caught.value) and str(caught.value).endswith(str(path)), \
                (name, read.__name__, str(caught.value))
    with pytest.raises(MediaError, match="image file not found: .*gone.png"):
        image_size(str(tmp_path / "gone.png"))


def test_a_png_with_a_damaged_chunk_fails_its_header_check(tmp_path):
    """``verify`` checks every chunk's CRC without decoding: a flipped byte is found."""
    data = bytearray(noise((64, 48), "PNG"))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match="truncated or corrupt image file"):
        image_size(str(path))


def test_a_truncated_jpeg_passes_the_header_and_fails_the_decode(tmp_path):
    data = noise((64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert image_size(str(path)) == (64, 64)  # the header is intact
    assert images_lib.inspect_image(str(path)) == (64, 64)
    for read in (lambda p: images_lib.inspect_image(p, decode=True), load_image):
        with pytest.raises(MediaError, match=r"truncated or corrupt image file \(image file is "
                                             r"truncated.*cut.jpg"):
            read(str(path))


def test_decompression_bombs_are_refused_before_any_decode(tmp_path, monkeypatch):
    huge = claimed_png(tmp_path / "huge.png", 100_000, 100_000)  # past twice PIL's limit
    for read in (image_size, load_image, images_lib.inspect_image):
        with pytest.raises(MediaError) as caught:  # not PIL's DecompressionBombError
            read(str(huge))
        assert str(caught.value) == (f"image too large to decode safely: 10000000000 pixels > "
                                     f"{images_lib.MAX_IMAGE_PIXELS} (a decompression bomb?): "
                                     f"{huge}")
    # Past the limit but within twice it PIL only warns; the header check refuses it, also
    # where warnings are errors.
    big = claimed_png(tmp_path / "big.png", 10_000, 10_000)
    expected = (f"image too large to decode safely: 10000x10000 = 100000000 pixels > "
                f"{images_lib.MAX_IMAGE_PIXELS} (a decompression bomb?): {big}")
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(MediaError) as caught:
        image_size(str(big))
    assert str(caught.value) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MediaError, match="image too large to decode safely"):
            load_image(str(big))
    # The limit is ours to set.
    small = tmp_path / "small.png"
    small.write_bytes(encoded((20, 20)))
    monkeypatch.setattr(images_lib, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MediaError, match=r"20x20 = 400 pixels > 100 \(a decompression bomb\?\)"):
        load_image(str(small))
    with pytest.raises(MediaError, match="20x20 = 400 pixels > 100"):
        images_lib.inspect_image(data_uri(encoded((20, 20))))


def test_image_sizes_of_files_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(encoded((30, 20)))
    opened, open_image = [], Image.open
    monkeypatch.setattr(Image, "open",
                        lambda fp, *a, **k: opened.append(fp) or open_image(fp, *a, **k))
    assert image_size(str(path)) == (20, 30)
    n = len(opened)
    assert n > 0 and [image_size(str(path)) for _ in range(5)] == [(20, 30)] * 5
    assert len(opened) == n  # the planner asks again for every budget it tries
    path.write_bytes(encoded((50, 40)))
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    assert image_size(str(path)) == (40, 50)


# --------------------------------------------------------------------------------------------
# 4. EXIF orientation and transparency, as viewers show them


def test_exif_orientation_is_applied_to_size_and_pixels(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(encoded((40, 20), "JPEG", mark=True, orientation=6))  # stored 40x20
    assert Image.open(path).size == (40, 20)
    assert image_size(str(path)) == (40, 20)  # displayed: 20 wide, 40 high
    image = load_image(str(path))
    assert image.size == (20, 40)
    # Orientation 6: turned a quarter clockwise to show, so the stored top-left corner is
    # shown top-right.
    assert is_mark(image.getpixel((17, 2))) and not is_mark(image.getpixel((2, 2)))
    assert load_image(image).size == (20, 40)  # applying it again changes nothing
    for orientation, size in ((3, (40, 20)), (8, (20, 40)), (1, (40, 20))):
        path.write_bytes(encoded((40, 20), "JPEG", orientation=orientation))
        assert load_image(str(path)).size == size
        assert image_size(str(path)) == size[::-1]


def test_transparent_pixels_are_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    image = load_image(str(tmp_path / "a.png"))
    assert image.getpixel((5, 5)) == (255, 255, 255) and image.getpixel((0, 0)) == (255, 0, 0)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([255, 0, 0, 0, 0, 0])
    palette.save(tmp_path / "p.png", transparency=1)  # index 1 (black) is transparent
    assert load_image(str(tmp_path / "p.png")).getpixel((3, 3)) == (255, 255, 255)
    assert load_image(rgba).getpixel((5, 5)) == (255, 255, 255)


# --------------------------------------------------------------------------------------------
# 5. Videos with a display rotation are decoded upright


def corner_marks(frame: torch.Tensor) -> dict[str, bool]:
    """Which corners of a (3, H, W) frame hold the mark."""
    h, w = frame.shape[1:]
    corners = {"top-left": (2, 2), "top-right": (2, w - 3), "bottom-left": (h - 3, 2),
               "bottom-right": (h - 3, w - 3)}
    return {name: is_mark(frame[:, y, x].tolist()) for name, (y, x) in corners.items()}


@pytest.mark.parametrize("rotation, shown_at", [(90, "bottom-left"), (-90, "top-right"),
                                                (180, "bottom-right"), (0, "top-left")])
def test_rotated_video_is_probed_and_decoded_as_players_show_it(tmp_path, rotation, shown_at):
    """Stored 64x32 with the mark top-left. 90 (counter-clockwise) shows it 32 wide and 64
    high with the mark bottom-left; -90 (a phone held upright) top-right."""
    path = marked_video(tmp_path / f"r{rotation}.mp4", 64, 32, rotation=rotation)
    ref = video_lib.VideoRef(str(path))
    info = video_lib.probe(ref)
    assert (info.width, info.height) == ((32, 64) if rotation % 180 else (64, 32))
    assert video_lib.check(ref) is None
    loaded = video_lib.load(ref, VisionBudget(num_frames=4))
    plan = video_lib.plan(info, VisionBudget(num_frames=4), ref)
    assert tuple(loaded.frames.shape[2:]) == (plan.height, plan.width)  # plan and frames agree
    assert (plan.height > plan.width) == bool(rotation % 180)
    marks = corner_marks(loaded.frames[0])
    assert [corner for corner, marked in marks.items() if marked] == [shown_at], marks


def test_rotated_video_plans_the_tokens_the_processor_makes(processor, tmp_path):
    from data.encode import SampleEncoder
    from data.planner import TokenPlanner

    path = marked_video(tmp_path / "phone.mp4", 96, 32, rotation=-90)
    turns = [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]
    (sample,) = load_source("llava_json", write_json(tmp_path / "t.json", [
        {"id": "v", "video": str(path), "conversations": turns}]))
    budget = VisionBudget(num_frames=4)
    encoded_sample = SampleEncoder(processor, budget).encode(sample)
    _, h, w = encoded_sample["video_grid_thw"][0].tolist()
    assert h > w  # portrait, as shown
    assert TokenPlanner(processor, budget).plan(sample).total == len(encoded_sample["input_ids"])


# --------------------------------------------------------------------------------------------
# 6. Undecodable video frames are counted, and too many refuse the video


def damaged_video(path, lost, n_frames: int = 20):
    """A 20-frame grey video (frame i at level 8 i), every frame a keyframe, whose packets
    ``lost`` are zeroed."""
    from tests.helpers.media_files import zero_packets

    write_grey_video(path, n_frames, 10, "mpeg4", 64, 48, gop=1)
    return zero_packets(path, lost)


def levels(frames: torch.Tensor) -> list[int]:
    return [round(float(v) / 8) for v in frames.float().mean(dim=(1, 2, 3))]


def test_frames_that_fail_to_decode_are_counted_and_repeat_the_one_before(tmp_path):
    ref = video_lib.VideoRef(str(damaged_video(tmp_path / "a.mp4", [10])))
    loaded = video_lib.load(ref, VisionBudget(num_frames=20))
    assert isinstance(loaded, video_lib.LoadedVideo) and loaded._fields == ("frames", "metadata",
                                                                             "filled")
    assert loaded.filled == 1 and len(loaded.frames) == 20  # 5%: used, and reported
    assert torch.equal(loaded.frames[10], loaded.frames[9])
    assert levels(loaded.frames)[8:13] == [8, 9, 9, 11, 12]
    plan = video_lib.FramePlan((0, 5, 10, 15), 32, 32, 10.0, 20)
    frames, filled = video_lib.decode_counted(ref, plan)
    assert filled == 1 and levels(frames) == [0, 5, 5, 15]


def test_a_video_with_too_many_undecodable_frames_is_refused(tmp_path):
    path = damaged_video(tmp_path / "b.mp4", [5, 6, 7])
    ref = video_lib.VideoRef(str(path))
    assert video_lib.check(ref) is None  # its first frame decodes: found when decoded
    with pytest.raises(MediaError) as caught:
        video_lib.load(ref, VisionBudget(num_frames=20))
    assert str(caught.value) == (f"3 of 20 sampled frames could not be decoded (more than 10%): "
                                 f"{path}")
    # A plan that misses the damaged frames loads cleanly.
    clean = video_lib.FramePlan((0, 4, 8, 12), 32, 32, 10.0, 20)
    assert video_lib.decode_counted(ref, clean)[1] == 0


def test_a_video_shorter_than_its_header_counts_the_missing_frames(tmp_path):
    path = write_grey_video(tmp_path / "c.mp4", 10, 10, "mpeg4", 64, 48)
    ref = video_lib.VideoRef(str(path))
    plan = video_lib.FramePlan(video_lib.frame_indices(16, 8), 32, 32, 10.0, 16)  # 16 promised
    frames, filled = video_lib.decode_counted(ref, plan)
    assert plan.indices == (0, 2, 4, 6, 9, 11, 13, 15) and filled == 3
    assert levels(frames) == [0, 2, 4, 6, 9, 9, 9, 9]


def test_an_unreadable_image_in_a_frame_list_still_fails_the_video(tmp_path):
    good, cut = tmp_path / "f0.png", tmp_path / "f1.png"
    good.write_bytes(encoded((32, 32)))
    cut.write_bytes(noise((32, 32), "PNG")[:200])
    ref = video_lib.VideoRef((str(good), str(cut)))
    with pytest.raises(MediaError, match="f1.png"):
        video_lib.load(ref, VisionBudget())


# --------------------------------------------------------------------------------------------
# 7. Raw image bytes in parquet files are images


def test_parquet_binary_and_struct_image_columns_are_read_as_images(tmp_path):
    folder = tmp_path / "export"
    (folder / "imgs").mkdir(parents=True)
    (folder / "imgs" / "on_disk.png").write_bytes(encoded((24, 56)))
    raw = [encoded((40, 20)), encoded((40, 20), "JPEG", mark=True, orientation=6)]
    qa = {"question": ["What colour?", "Which way up?"], "answer": ["blue", "up"]}
    files = {
        "binary.parquet": {"image": pa.array(raw, pa.binary())},
        "large.parquet": {"image": pa.array(raw, pa.large_binary())},
        "listed.parquet": {"images": pa.array([[r] for r in raw], pa.list_(pa.binary()))},
        "struct.parquet": {"image": pa.array(
            [{"bytes": raw[0], "path": None}, {"bytes": None, "path": "imgs/on_disk.png"}],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]))},
    }
    for name, columns in files.items():
        pq.write_table(pa.table({**columns, **qa}), folder / name)
        samples = load_source("hf_dataset", folder / name)
        assert [len(s.images) for s in samples] == [1, 1], name
        refs = [s.images[0] for s in samples]
        assert all(r.startswith("hfrow://") for r in refs)
        second = (56, 24) if name == "struct.parquet" else (40, 20)  # (height, width) as shown
        assert [image_size(r) for r in refs] == [(20, 40), second], name
        pixels = [load_image(r) for r in refs]
        assert [p.size for p in pixels] == [(40, 20), second[::-1]], name
        assert pixels[0].getpixel((5, 5)) == (0, 0, 255)
        if name != "struct.parquet":  # the JPEG's EXIF orientation holds in a dataset too
            assert is_mark(pixels[1].getpixel((17, 2)))
        assert samples[0].messages[0]["content"][-1]["text"] == "What colour?"


def test_a_dataset_image_that_cannot_be_used_is_a_media_error(tmp_path):
    path = tmp_path / "bad.parquet"
    jpeg = noise((64, 64), "JPEG")
    cells = [b"", b"junk bytes", encoded((600, 2)), jpeg[: len(jpeg) * 2 // 3]]
    pq.write_table(pa.table({"image": pa.array(cells, pa.binary()), "question": ["q"] * 4,
                             "answer": ["a"] * 4}), path)
    refs = [s.images[0] for s in load_source("hf_dataset", path)]
    reasons = ["empty image file (0 bytes)", "not an image file", "aspect ratio past 200:1"]
    for row, (ref, reason) in enumerate(zip(refs, reasons)):
        for read in (image_size, load_image):
            with pytest.raises(MediaError, match=re.escape(reason)) as caught:
                read(ref)
            assert f"row {row}, column 'image' of {path}" in str(caught.value)
    assert image_size(refs[3]) == (64, 64)  # a truncated JPEG: found when decoded
    with pytest.raises(MediaError, match="truncated or corrupt image file .*row 3, column 'image'"):
        load_image(refs[3])


# --------------------------------------------------------------------------------------------
# 8. The decoded-pixel bound is the config's; large JPEGs decode at the scale their budget needs


@pytest.fixture
def pixel_limit():
    """Set the process-wide limit for one test, then put PIL's default back."""
    yield images_lib.set_max_image_pixels
    images_lib.set_max_image_pixels(images_lib.DEFAULT_MAX_IMAGE_PIXELS)


def test_data_max_image_pixels_bounds_what_training_decodes(processor, tmp_path, pixel_limit):
    from data.config import DataConfig
    from data.corpus import load_corpus

    root = tmp_path / "d"
    root.mkdir()
    (root / "small.png").write_bytes(encoded((32, 32)))
    (root / "large.png").write_bytes(encoded((64, 48)))
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    data = write_json(root / "t.json", [{"id": "s", "image": "small.png", "conversations": turns},
                                        {"id": "l", "image": "large.png", "conversations": turns}])
    bad = BadSampleLog("skip")
    corpus = load_corpus(DataConfig(train=str(data), max_image_pixels=2000), processor, bad,
                         plan=True)
    assert len(corpus) == 1
    (record,) = bad.records
    assert record.sample_id == "l" and "64x48 = 3072 pixels > 2000 (a decompression bomb?)" in record.reason
    with pytest.raises(ValueError, match="data.max_image_pixels must be > 0"):
        DataConfig(train=str(data), max_image_pixels=0)
    # Raised above PIL's own limit, PIL does not refuse first with its own error.
    pixel_limit(300_000_000)
    big = claimed_png(tmp_path / "big.png", 15_000, 15_000)  # 225 MP: past twice PIL's default
    assert image_size(str(big)) == (15_000, 15_000)  # from the header: nothing decoded


def jpeg_photo(path, size: tuple[int, int]) -> str:
    """A smooth JPEG (gradients), like a photo: a reduced-scale decode keeps its content."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    pixels = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return str(path)


def test_large_jpegs_decode_at_a_reduced_scale_to_the_planned_size(tmp_path, monkeypatch):
    path = jpeg_photo(tmp_path / "photo.jpg", (2048, 1536))
    from PIL.JpegImagePlugin import JpegImageFile

    decoded_sizes = []
    real_draft = JpegImageFile.draft

    def recording_draft(im, mode, size):
        result = real_draft(im, mode, size)
        decoded_sizes.append(im.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", recording_draft)
    fitted = load_image(path, fit=(384, 512))
    assert fitted.size == (512, 384)
    assert decoded_sizes == [(512, 384)]  # a quarter per side: 1/16 of the pixels decoded
    full = load_image(path).resize((512, 384), Image.Resampling.BICUBIC)
    diff = np.abs(np.asarray(fitted, np.int16) - np.asarray(full, np.int16))
    assert diff.mean() < 2.0 and diff.max() <= 40, (diff.mean(), diff.max())
    # Images not much larger than their fit, and other formats, decode in full as before.
    assert load_image(path, fit=(1024, 1376)).size == (2048, 1536)
    png = tmp_path / "photo.png"
    Image.open(path).save(png)
    assert load_image(str(png), fit=(384, 512)).size == (2048, 1536)
    assert len(decoded_sizes) == 1  # neither the near fit nor the PNG asked for a reduced decode


def test_a_large_jpeg_encodes_to_the_planned_tokens(processor, tmp_path):
    from data.encode import SampleEncoder
    from data.planner import TokenPlanner

    path = jpeg_photo(tmp_path / "photo.jpg", (1600, 900))
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    (sample,) = load_source("llava_json", write_json(tmp_path / "t.json", [
        {"id": "p", "image": str(path), "conversations": turns}]))
    budget = VisionBudget(max_pixels=32 * 32 * 64)
    example = SampleEncoder(processor, budget).encode(sample)
    reference = processor.image_processor(images=[Image.open(path).convert("RGB")],
                                          return_tensors="pt", **budget.images_kwargs())
    assert example["image_grid_thw"].tolist() == reference["image_grid_thw"].tolist()
    assert TokenPlanner(processor, budget).plan(sample).total == len(example["input_ids"])
    gap = (example["pixel_values"] - reference["pixel_values"]).abs().mean().item()
    assert gap < 0.02, gap  # normalised pixels: the same picture, differently downscaled
