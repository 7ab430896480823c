"""A synthetic corpus a tiny model can learn: VQA, grounding and document reading.

Written in the Qwen-finetune / LLaVA JSON layout (``image`` + ``conversations`` with ``<image>``
tags), so it goes through exactly the loader a real corpus does. Each task is a small stand-in
for a real benchmark family, scored later with that family's metric:

- ``vqa``: shapes on a canvas; colour / shape / count questions (exact match, as VQAv2-style).
- ``grounding``: one shape; the answer is a Qwen3-VL ``bbox_2d`` in relative [0, 1000)
  coordinates (Acc@IoU>=0.5, as RefCOCO).
- ``doc``: a rendered page; read its title (ANLS, as DocVQA).

Objects sit on a 3x3 grid of 32-pixel cells, one cell per visual token after Qwen3-VL's 2x2
merge of 16-pixel patches, so what must be learned is within reach of a 2-layer model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from data.boxes import box_to_relative

TASKS = ("vqa", "grounding", "doc")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220),
          "yellow": (230, 200, 20), "purple": (140, 50, 170), "orange": (240, 130, 20)}
SHAPES = ("circle", "square", "triangle")
TITLES = ("INVOICE", "REPORT", "MEMO", "LETTER", "NOTICE", "MENU", "AGENDA", "TICKET")
NUMBER_WORDS = {1: "1", 2: "2", 3: "3"}

CELL, GRID = 32, 3
CANVAS = CELL * GRID
SHORT_ANSWER = "Answer the question using a single word or phrase."


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _cell_box(rng: random.Random, cell: int) -> tuple[int, int, int, int]:
    """An object box in grid ``cell``: 24-28 px, near the cell centre (a few px of jitter)."""
    row, col = divmod(cell, GRID)
    size = rng.randint(24, 28)
    x1 = col * CELL + min(CELL - size, max(0, (CELL - size) // 2 + rng.randint(-2, 2)))
    y1 = row * CELL + min(CELL - size, max(0, (CELL - size) // 2 + rng.randint(-2, 2)))
    return x1, y1, x1 + size - 1, y1 + size - 1


def make_vqa(rng: random.Random) -> tuple[Image.Image, str, str]:
    image = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(image)
    color, shape, count = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randint(1, 3)
    for cell in rng.sample(range(GRID * GRID), count):
        draw_shape(draw, shape, _cell_box(rng, cell), COLORS[color])
    kind = rng.choice(("color", "shape", "count"))
    question, answer = {
        "color": ("What color are the shapes in the image?", color),
        "shape": ("What kind of shape is in the image?", shape),
        "count": ("How many shapes are in the image?", NUMBER_WORDS[count]),
    }[kind]
    return image, f"{question}\n{SHORT_ANSWER}", answer


def make_grounding(rng: random.Random, distractors: int = 0) -> tuple[Image.Image, str, str]:
    """One shape to locate, plus ``distractors`` shapes of other kinds in other cells."""
    image = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(image)
    shapes = rng.sample(SHAPES, 1 + distractors)
    cells = rng.sample(range(GRID * GRID), 1 + distractors)
    boxes = [_cell_box(rng, cell) for cell in cells]
    for shape, box in zip(shapes, boxes):
        draw_shape(draw, shape, box, COLORS[rng.choice(list(COLORS))])
    shape, box = shapes[0], boxes[0]
    # Pixel box -> Qwen3-VL relative coordinates; x2/y2 are exclusive edges in pixels.
    rel = box_to_relative([box[0], box[1], box[2] + 1, box[3] + 1], CANVAS, CANVAS)
    answer = json.dumps([{"bbox_2d": rel, "label": shape}])
    question = f"Locate the {shape} in this image. Report bbox coordinates in JSON format."
    return image, question, answer


def make_grounding_distractor(rng: random.Random) -> tuple[Image.Image, str, str]:
    """Grounding with a second shape of another kind in the image: the reply must pick the one
    the question names. Not in the demo's fine-tuning mix; the RL demo's task."""
    return make_grounding(rng, distractors=1)


def make_doc(rng: random.Random) -> tuple[Image.Image, str, str]:
    width, height = 160, 96
    image = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    title = rng.choice(TITLES)
    font = ImageFont.load_default(size=24)
    left, top, right, _ = draw.textbbox((0, 0), title, font=font)
    x = (width - (right - left)) // 2 - left + rng.randint(-4, 4)
    draw.text((x, 8 - top + rng.randint(0, 4)), title, fill="black", font=font)
    for y in range(48, height - 8, 10):  # body text lines, drawn as grey bars
        draw.line([(8, y), (rng.randint(60, width - 8), y)], fill=(150, 150, 150), width=3)
    return image, f"What is the title of this document?\n{SHORT_ANSWER}", title


MAKERS = {"vqa": make_vqa, "grounding": make_grounding, "doc": make_doc,
          "grounding_distractor": make_grounding_distractor}


def write_split(out_dir: Path, split: str, per_task: int, seed: int,
                tasks: tuple[str, ...] = TASKS) -> Path:
    """Write ``per_task`` samples of each of ``tasks`` to ``out_dir/{split}.json`` plus image
    files."""
    rng = random.Random(f"{seed}-{split}")
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for task in tasks:
        for i in range(per_task):
            image, question, answer = MAKERS[task](rng)
            sample_id = f"{split}-{task}-{i:05d}"
            rel_path = f"images/{split}/{sample_id}.png"
            image.save(out_dir / rel_path)
            records.append({
                "id": sample_id, "task": task, "image": rel_path,
                "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                  {"from": "gpt", "value": answer}],
            })
    rng.shuffle(records)
    path = out_dir / f"{split}.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def generate(out_dir: str | Path, train_per_task: int = 1000, eval_per_task: int = 50,
             seed: int = 0, tasks: tuple[str, ...] | list[str] = TASKS) -> dict[str, Path]:
    """The corpus's train and eval splits. ``tasks``: kinds from ``MAKERS`` (default: the
    demo's three, ``TASKS``)."""
    unknown = sorted(set(tasks) - set(MAKERS))
    if unknown or not tasks:
        raise ValueError(f"{'unknown synthetic task(s) ' + str(unknown) if unknown else 'no task named'}"
                         f"; choose from {', '.join(MAKERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"train": write_split(out_dir, "train", train_per_task, seed, tuple(tasks)),
            "eval": write_split(out_dir, "eval", eval_per_task, seed + 1, tuple(tasks))}


def write_mixed_modality(train_json: str | Path, out_path: str | Path, n_images: int = 12) -> Path:
    """The first ``n_images`` samples of a ``generate`` split interleaved with as many text-only
    ones (absolute image paths), so data-parallel ranks regularly hold different modalities in
    the same step - the case ZeRO-3 must survive."""
    import json

    train_json = Path(train_json)
    rows = json.loads(train_json.read_text())[:n_images]
    for r in rows:
        r["image"] = str(train_json.parent / r["image"])
    text = [{"id": f"text-{i}", "conversations": [{"from": "human", "value": f"Say {i} twice."},
                                                  {"from": "gpt", "value": f"{i} {i}"}]}
            for i in range(len(rows))]
    out_path = Path(out_path)
    out_path.write_text(json.dumps([x for pair in zip(rows, text) for x in pair]))
    return out_path


def write_grey_video(path, n_frames: int, fps: float = 10, codec: str = "mpeg4", width: int = 64,
                     height: int = 48, level_step: int = 8, gop: int | None = None) -> Path:
    """A video whose frame i is a flat grey of level ``level_step * i`` (mod 256), so a
    decoded frame tells its index. ``gop``: a keyframe every ``gop`` frames."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(n_frames):
            pixels = np.full((height, width, 3), level_step * i % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
