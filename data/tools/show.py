"""``python -m data show``: look at encoded samples the way the model gets them.

Numbers (``stats``) cannot show a wrong chat template, a label span that covers the question,
or a box that misses its object after the budget resize. This renders a few encoded samples:

- the encoded ids decoded back to text, with each run of visual pad tokens collapsed to one
  marker (``<|image_pad|>x64 (grid 1x16x16)``) and the trained tokens (labels != -100)
  between ``[[`` and ``]]`` (or coloured on a terminal);
- each image as the model sees it, rebuilt from the encoded ``pixel_values`` (so after the
  budget resize), with the boxes and points of the sample's answers drawn on it. Answers use
  Qwen3-VL's relative [0, 1000) coordinates (``data.boxes``), which hold under any resize, so
  a box that misses its object here is wrong in the data. Videos become a sheet of their frames.

Samples are read as training gets them (``data.tools.stats.read_for_training``): a sample shrunk to
fit ``data.max_seq_len`` / ``data.max_visual_tokens`` is shown at its smaller budget.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from data.boxes import answer_json, box_from_relative, point_from_relative
from data.config import DataConfig
from data.encode import IGNORE_INDEX, REPAIRS
from data.samples import BadSample, Sample, reason_of
from data.tools.stats import SourceSamples, read_for_training

LABEL_MARKS = ("[[", "]]")
TERMINAL_MARKS = ("\x1b[1;32m", "\x1b[0m")  # bold green
MARK_COLOR = (255, 0, 255)  # magenta: rare in natural images and absent from the synthetic ones
MIN_VIEW_SIDE = 384  # small images are enlarged (nearest neighbour, integer factor) for viewing


@dataclass
class Mark:
    """A box ``[x1, y1, x2, y2]`` or a point ``[x, y]`` in relative [0, 1000) coordinates."""

    kind: str  # "box" | "point"
    coords: list[float]
    label: str | None = None


# ---------------------------------------------------------------------------------------- text

def render_text(ids: list[int], labels: list[int] | None, tokenizer, pad_grids: dict[int, list],
                marks: tuple[str, str] = LABEL_MARKS, merge_size: int = 2) -> str:
    """Decode ``ids`` to text. Runs of a visual pad token (keys of ``pad_grids``) become one
    marker naming the run length and the grid it belongs to; trained tokens are wrapped in
    ``marks``. ``pad_grids[token]`` lists the (t, h, w) grids of that token's images/videos in
    order; a video split into several runs (one per timestamp) names the step of each run."""
    streams = {token: _GridStream(list(grids), merge_size**2) for token, grids in pad_grids.items()}
    out, trained, i = [], False, 0

    def same_span(j: int) -> bool:  # token j is on the same side of the label boundary as i
        return labels is None or (labels[j] != IGNORE_INDEX) == trained

    while i < len(ids):
        is_trained = labels is not None and labels[i] != IGNORE_INDEX
        if is_trained != trained:
            out.append(marks[0] if is_trained else marks[1])
            trained = is_trained
        token, j = ids[i], i + 1
        if token in streams:
            while j < len(ids) and ids[j] == token and same_span(j):
                j += 1
            out.append(f"{tokenizer.convert_ids_to_tokens(token)}x{j - i} "
                       f"({streams[token].describe(j - i)})")
        else:
            while j < len(ids) and ids[j] not in streams and same_span(j):
                j += 1
            out.append(tokenizer.decode(ids[i:j], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False))
        i = j
    if trained:
        out.append(marks[1])
    return "".join(out)


class _GridStream:
    """Walks the grids of one kind of visual token as runs of that token are met."""

    def __init__(self, grids: list, tokens_per_cell: int):
        self.grids, self.per_cell = grids, tokens_per_cell
        self.current, self.left, self.step = None, 0, 0

    def describe(self, run: int) -> str:
        if self.left <= 0:
            self.current = tuple(self.grids.pop(0)) if self.grids else None
            self.left, self.step = (_prod(self.current) // self.per_cell if self.current else 0), 0
        self.left -= run
        self.step += 1
        if self.current is None:
            return "grid unknown"
        desc = "grid " + "x".join(str(v) for v in self.current)
        if self.current[0] > 1 and run < _prod(self.current) // self.per_cell:
            desc += f", step {self.step}/{self.current[0]}"
        return desc


def _prod(grid) -> int:
    return math.prod(int(v) for v in grid)


# -------------------------------------------------------------------------------------- images

def unpatchify(pixel_values: torch.Tensor, grid_thw, processor_part) -> list[Image.Image]:
    """The frames one image/video's rows of ``pixel_values`` encode, as RGB images: the inverse
    of the Qwen2-VL / Qwen3-VL patchify (rows ordered t, h/merge, w/merge, merge, merge; each row
    channel x temporal x patch x patch), then the normalisation undone."""
    t, h, w = (int(v) for v in grid_thw)
    p, m = processor_part.patch_size, processor_part.merge_size
    tp = processor_part.temporal_patch_size
    x = pixel_values.reshape(t, h // m, w // m, m, m, 3, tp, p, p)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t * tp, 3, h * p, w * p)
    mean = torch.tensor(processor_part.image_mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(processor_part.image_std, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x * std + mean) / processor_part.rescale_factor
    frames = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(f) for f in frames]


def _each_visual(example: dict, pixels: str, grids: str, processor_part) -> list[list[Image.Image]]:
    """The frames of each image or video of an encoded example, in order."""
    if pixels not in example:
        return []
    visuals, row = [], 0
    for grid in example[grids]:
        n = int(grid.prod())
        visuals.append(unpatchify(example[pixels][row:row + n], grid, processor_part))
        row += n
    return visuals


def model_view_images(example: dict, processor) -> list[Image.Image]:
    """Each image of an encoded example exactly as the vision tower receives it."""
    return [frames[0] for frames in  # an image's frames are copies
            _each_visual(example, "pixel_values", "image_grid_thw", processor.image_processor)]


def model_view_videos(example: dict, processor) -> list[list[Image.Image]]:
    """Each video's frames as the vision tower receives them."""
    return _each_visual(example, "pixel_values_videos", "video_grid_thw", processor.video_processor)


def contact_sheet(frames: list[Image.Image], columns: int = 8) -> Image.Image:
    w, h = frames[0].size
    rows = math.ceil(len(frames) / columns)
    sheet = Image.new("RGB", (w * min(columns, len(frames)), h * rows), "white")
    for k, frame in enumerate(frames):
        sheet.paste(frame, ((k % columns) * w, (k // columns) * h))
    return sheet


_BOX_RE = re.compile(r'"bbox_2d"\s*:\s*\[([^\]]*)\]')
_POINT_RE = re.compile(r'"point_2d"\s*:\s*\[([^\]]*)\]')


def answer_marks(text: str) -> list[Mark]:
    """Boxes (``bbox_2d``) and points (``point_2d``) in a Qwen3-VL grounding answer: JSON
    objects (a list, one object, nested, or in a ```json fence), labels kept; text that is not
    valid JSON is searched for the ``"bbox_2d": [...]`` / ``"point_2d": [...]`` fields."""
    data, _ = answer_json(text)
    marks: list[Mark] = []
    if data is not None and not isinstance(data, (int, float, str)):
        _walk(data, marks)
        return marks
    for regex, kind, size in ((_BOX_RE, "box", 4), (_POINT_RE, "point", 2)):
        for match in regex.finditer(text):
            coords = _numbers(match.group(1).split(","), size)
            if coords:
                marks.append(Mark(kind, coords))
    return marks


def _walk(node, marks: list[Mark]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, marks)
    elif isinstance(node, dict):
        label = node.get("label")
        label = str(label) if label is not None else None
        for key, kind, size in (("bbox_2d", "box", 4), ("point_2d", "point", 2)):
            value = node.get(key)
            coords = _numbers(value, size) if isinstance(value, list) else None
            if coords:
                marks.append(Mark(kind, coords, label))
        for key, value in node.items():
            if key not in ("bbox_2d", "point_2d"):
                _walk(value, marks)


def _numbers(values, size: int) -> list[float] | None:
    try:
        coords = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return coords if len(coords) == size else None


def sample_marks(sample: Sample) -> list[Mark]:
    """Boxes and points of every assistant turn of a sample."""
    marks = []
    for message in sample.messages:
        if message["role"] == "assistant":
            marks += answer_marks("".join(p.get("text", "") for p in message["content"]))
    return marks


def draw_marks(image: Image.Image, marks: list[Mark]) -> Image.Image:
    """``image`` enlarged by an integer factor (small images only) with ``marks`` drawn: a
    box outline on the box's edge pixels, a point as a cross with a ring."""
    zoom = max(1, math.ceil(MIN_VIEW_SIDE / max(image.size)))
    view = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(view)
    width, height = view.size
    line = max(1, zoom // 2)
    for mark in marks:
        if mark.kind == "box":
            x1, y1, x2, y2 = (round(v) for v in box_from_relative(mark.coords, width, height))
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=MARK_COLOR, width=line)
            anchor = (x1 + 2, max(0, y1 - 12))
        else:
            x, y = (round(v) for v in point_from_relative(mark.coords, width, height))
            r = max(5, max(width, height) // 60)
            draw.line([(x - r, y), (x + r, y)], fill=MARK_COLOR, width=line)
            draw.line([(x, y - r), (x, y + r)], fill=MARK_COLOR, width=line)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=MARK_COLOR, width=1)
            anchor = (x + r + 2, max(0, y - r - 12))
        if mark.label:
            draw.text(anchor, mark.label, fill=MARK_COLOR)
    return view


# ------------------------------------------------------------------------------------- driving

def select(sources: list[SourceSamples], n: int, ids: list[str] | None,
           source: str | None) -> tuple[list[tuple[SourceSamples, Sample]], list[str]]:
    """The samples to show (``ids`` if given, else the first ``n`` taken from the sources in
    turn) and the requested ids that were not found."""
    if source is not None:
        names = [s.config.name for s in sources]
        if source not in names:
            raise ValueError(f"--source {source!r} is not a source of this config; sources: "
                             f"{', '.join(names)}")
        sources = [s for s in sources if s.config.name == source]
    if ids:
        found = {}
        for s in sources:
            for sample in s.samples:
                if sample.id in ids and sample.id not in found:
                    found[sample.id] = (s, sample)
        return [found[i] for i in ids if i in found], [i for i in ids if i not in found]
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(s.samples) for s in sources):
        picked += [(s, s.samples[depth]) for s in sources if depth < len(s.samples)]
        depth += 1
    return picked[:n], []


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def show_sample(k: int, sample: Sample, example: dict, processor, out_dir: Path,
                source_name: str, marks: tuple[str, str] = LABEL_MARKS) -> dict:
    """Write one sample's rendering and images; returns its entry of ``show.json``."""
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    pad_grids = {processor.image_token_id: [tuple(g.tolist()) for g in example.get("image_grid_thw", [])],
                 processor.video_token_id: [tuple(g.tolist()) for g in example.get("video_grid_thw", [])]}
    merge = processor.image_processor.merge_size
    text = render_text(ids, labels, processor.tokenizer, pad_grids, marks, merge)
    stem = f"{k:02d}_{_safe(sample.id)}"
    header = (f"# id {sample.id} | source {source_name} | {sample.source} record {sample.index}\n"
              f"# {len(ids)} tokens, {sum(t in pad_grids for t in ids)} visual, "
              f"{sum(label != IGNORE_INDEX for label in labels)} trained (between "
              f"{LABEL_MARKS[0]} {LABEL_MARKS[1]})\n\n")
    text_file = out_dir / f"{stem}.txt"
    plain = text if marks == LABEL_MARKS else render_text(ids, labels, processor.tokenizer,
                                                          pad_grids, LABEL_MARKS, merge)
    text_file.write_text(header + plain)
    found = sample_marks(sample)
    entry = {"id": sample.id, "source": source_name, "file": sample.source, "index": sample.index,
             "tokens": len(ids), "visual_tokens": sum(t in pad_grids for t in ids),
             "trained_tokens": sum(label != IGNORE_INDEX for label in labels),
             "answer": sample.answer(), "text_file": str(text_file), "text": text,
             "marks": [vars(m) for m in found], "images": []}
    for j, image in enumerate(model_view_images(example, processor)):
        view = draw_marks(image, found if len(example["image_grid_thw"]) == 1 else [])
        path = out_dir / f"{stem}_img{j}.png"
        view.save(path)
        entry["images"].append({"file": str(path), "model_size": list(image.size),
                                "zoom": view.width // image.width,
                                "grid": example["image_grid_thw"][j].tolist()})
    for j, frames in enumerate(model_view_videos(example, processor)):
        path = out_dir / f"{stem}_video{j}.png"
        contact_sheet(frames).save(path)
        entry["images"].append({"file": str(path), "model_size": list(frames[0].size),
                                "frames": len(frames),
                                "grid": example["video_grid_thw"][j].tolist()})
    return entry


def run(cfg: DataConfig, processor, out_dir: str | Path, n: int = 5, ids: list[str] | None = None,
        source: str | None = None, print_text: bool = False) -> dict:
    """Encode the selected samples and write ``out_dir/<k>_<id>.txt``, ``..._img<j>.png`` and
    ``show.json``. Boxes are drawn on a sample's image when it has exactly one (with several,
    the answer does not say which image a box belongs to)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = read_for_training(cfg, processor)
    chosen, missing = select(sources, n, ids, source)
    terminal = print_text and sys.stdout.isatty()
    shown, failed = [], []
    for k, (src, sample) in enumerate(chosen):
        name = src.config.name
        try:
            example = src.encoder.encode(sample)
        except (OSError, ValueError) as e:
            failed.append(BadSample(sample.source, sample.index, sample.id, reason_of(e),
                                    name).to_json("encode"))
            continue
        repairs = example.pop(REPAIRS, [])
        entry = show_sample(k, sample, example, processor, out_dir, name,
                            TERMINAL_MARKS if terminal else LABEL_MARKS)
        if repairs:
            entry["repairs"] = repairs
        if print_text:
            print(f"----- {sample.id} ({name})\n{entry['text']}")
        shown.append(entry)
    bad_records = [r.to_json("read") for s in sources for r in s.bad.records]
    why = {r["id"]: r["reason"] for r in bad_records}
    result = {"out": str(out_dir), "shown": shown, "failed": failed, "missing_ids": missing,
              "missing_reasons": {i: why[i] for i in missing if i in why},
              "bad_records": bad_records}
    doc = dict(result, shown=[{k: v for k, v in e.items() if k != "text"} for e in shown])
    (out_dir / "show.json").write_text(json.dumps(doc, indent=1))
    return result


def format_summary(result: dict) -> str:
    lines = []
    for e in result["shown"]:
        images = ", ".join(f"{'x'.join(map(str, i['model_size']))}px" for i in e["images"]) or "no image"
        lines.append(f"{e['id']} ({e['source']}): {e['tokens']} tokens ({e['visual_tokens']} visual, "
                     f"{e['trained_tokens']} trained); {images}; {len(e['marks'])} boxes/points; "
                     f"answer {e['answer'][:60]!r}")
    for f in result["failed"]:
        lines.append(f"{f['id']} ({f['source']}): failed to encode: {f['reason']}")
    for sample_id in result["missing_ids"]:
        reason = result["missing_reasons"].get(sample_id, "no sample has this id")
        lines.append(f"{sample_id}: not shown: {reason}")
    lines.append(f"[data] wrote {len(result['shown'])} samples to {result['out']} (show.json)")
    return "\n".join(lines)
