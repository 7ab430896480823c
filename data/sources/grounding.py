"""Grounding corpora -> samples whose answer is Qwen3-VL's JSON grounding output.

Answers are ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}, ...]`` or
``[{"point_2d": [x, y], "label": "..."}]`` in RELATIVE coordinates on the [0, 1000) scale of
``data.boxes`` (the synthetic grounding task's convention), so they stay correct under any
resize the vision budget applies; ``data.boxes`` holds the inverse (relative -> pixels of the
original image, ``parse_points``) that eval uses. ``meta`` keeps what a scorer needs in pixels
of the original image: ``image_size`` ``[w, h]``, ``boxes`` (``[x1, y1, x2, y2]`` after repair)
and ``labels``.

``format: coco`` — ``path`` is a COCO instances JSON (``images``, ``annotations`` with pixel
``bbox`` ``[x, y, w, h]``, ``categories``); images resolve against ``image_root`` (default the
JSON's folder). ``task``: ``per_image`` (default: one sample per image locating every object;
prompt placeholder ``{labels}``, the image's category names) or ``per_category`` (one sample
per image and category; ``{label}``). Crowd annotations (``iscrowd``) are left out, and images
without other annotations give no sample (COCO has such images; they are not errors).

``format: refcoco`` — one sample per referring expression, answer one box (``task: bbox``,
default) or its centre (``task: point``); prompt placeholder ``{expression}``. ``path`` is
  - a dataset in the lmms-lab/RefCOCO(+/g) layout (hub id, parquet or ``save_to_disk`` folder,
    read by ``data.sources.hf_dataset``): ``question_id, image, question, answer, segmentation, bbox,
    iscrowd, file_name``, where ``answer`` holds the expressions (a list) and ``question`` a
    fixed captioning prompt (ignored); ``bbox`` is pixel ``[x, y, w, h]``. Roles can be
    remapped with ``columns`` (``image``, ``expression``, ``bbox``, ``id``, ``width``,
    ``height``);
  - or the classic release as JSON: a list of refs (``ref_id, ann_id, image_id, split,
    sentences: [{"sent": ...}]``; convert ``refs(unc).p`` with pickle + json once) with
    ``instances.json`` beside it; refs whose ``split`` is not the source's split are left out.

``format: screenspot`` — GUI grounding, one sample per record; answer the element's centre
(``task: point``, default) or its box (``task: bbox``); prompt placeholder ``{instruction}``.
``path`` is a ScreenSpot JSON list (``img_filename, bbox, instruction, data_type,
data_source``; ScreenSpot-Pro adds ``img_size`` ``[w, h]``), or a dataset in the hub mirrors'
layout (``image, bbox, instruction, ...``, e.g. rootsautomation/ScreenSpot).

Box layouts (``SourceConfig.box_format``, see ``data.boxes.BOX_FORMATS``): ``xywh`` pixels by
default for coco, refcoco and ScreenSpot JSON (the original ScreenSpot and OS-Copilot's
ScreenSpot-v2 JSON both store ``[x, y, w, h]``); ScreenSpot-Pro's JSON stores pixel corners:
set ``box_format: xyxy``. Datasets read through ``datasets`` for screenspot default to
``xyxy_norm`` (corners as fractions of the image, as the hub mirrors store them).

A configured ``prompt`` replaces the default and may use the format's placeholder (literal
braces, e.g. a JSON example, are written ``{{ }}``).

Image size comes from the record when it has one (COCO ``width``/``height``, ScreenSpot-Pro
``img_size``, ``width``/``height`` columns), else from the image header (no decode).
Repair rule: a box partly outside the image is clipped to it. A box of zero area or entirely
outside the image, a box that is not 4 numbers, a missing or unreadable image, or an empty
expression/instruction makes the sample bad, with the reason.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from data import boxes as B
from data.config import SourceConfig
from data.media import images as images_lib
from data.samples import BadSample, BadSampleLog, DataError, Sample
from data.sources.chat import messages_to_sample
from data.sources.hf_dataset import open_split, resolve_columns
from data.sources.records import iter_records, template_fields

PROMPTS = {
    ("coco", "per_image"): "Locate every instance of the following categories in this image: "
                           "{labels}. Report bbox coordinates in JSON format.",
    ("coco", "per_category"): "Locate every {label} in this image. Report bbox coordinates in "
                              "JSON format.",
    ("refcoco", "bbox"): 'Locate "{expression}" in this image. Report bbox coordinates in JSON '
                         'format.',
    ("refcoco", "point"): 'Point to "{expression}" in this image. Report point coordinates in '
                          'JSON format.',
    ("screenspot", "point"): 'Point to the UI element for this instruction: "{instruction}". '
                             'Report point coordinates in JSON format.',
    ("screenspot", "bbox"): 'Locate the UI element for this instruction: "{instruction}". '
                            'Report bbox coordinates in JSON format.',
}
PROMPT_FIELDS = {("coco", "per_image"): {"labels"}, ("coco", "per_category"): {"label"},
                 ("refcoco", "bbox"): {"expression"}, ("refcoco", "point"): {"expression"},
                 ("screenspot", "point"): {"instruction"}, ("screenspot", "bbox"): {"instruction"}}
REFCOCO_ROLES = {"image": ("image",), "expression": ("answer", "expression", "sentences", "sentence"),
                 "bbox": ("bbox",), "id": ("question_id", "id"),
                 "width": ("width", "image_width"), "height": ("height", "image_height")}
SCREENSPOT_ROLES = {"image": ("image",), "instruction": ("instruction",), "bbox": ("bbox",),
                    "id": ("id",), "width": ("width", "image_width"),
                    "height": ("height", "image_height")}


# --- Answers ---------------------------------------------------------------------------------


def target(box_px: list[float], label: str, task: str, width: int, height: int) -> dict:
    """One answer entry: the box (``bbox_2d``) or its centre (``point_2d``), relative."""
    if task == "point":
        return {"point_2d": B.point_to_relative(B.box_center(box_px), width, height), "label": label}
    return {"bbox_2d": B.box_to_relative(box_px, width, height), "label": label}


def grounding_answer(targets: list[dict]) -> str:
    return json.dumps(targets, ensure_ascii=False)


def pixel_box(raw, box_format: str, width: int, height: int) -> list[float]:
    """A record's box -> pixel ``[x1, y1, x2, y2]`` inside the image (repair rule: clipped);
    ValueError if it cannot be located."""
    return B.clip_box(B.to_pixel_xyxy(raw, box_format, width, height), width, height)


# --- Shared steps ----------------------------------------------------------------------------


def _task(cfg: SourceConfig, choices: tuple[str, ...]) -> str:
    task = cfg.task or choices[0]
    if task not in choices:
        raise DataError(f"source {cfg.name}: format {cfg.format} has tasks {', '.join(choices)}; "
                        f"got task={task!r}")
    return task


def _prompt(cfg: SourceConfig, task: str) -> str:
    template = cfg.prompt if cfg.prompt is not None else PROMPTS[(cfg.format, task)]
    allowed = PROMPT_FIELDS[(cfg.format, task)]
    unknown = sorted(template_fields(template) - allowed)
    if unknown:
        raise DataError(f"source {cfg.name}: prompt placeholder {{{unknown[0]}}} is not known to "
                        f"{cfg.format} (task {task}); use {', '.join('{' + f + '}' for f in allowed)}")
    return template


def _size_hint(width, height) -> tuple[int, int] | None:
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (width, height))
    return (int(width), int(height)) if ok else None


def _locate_image(original: str, root, hint: tuple[int, int] | None,
                  confine: bool = True) -> tuple[str, int, int]:
    """(resolved reference, width, height): the size is the record's own when given, else the
    image header's. ``confine``: a relative path may not leave ``root``."""
    ref = images_lib.resolve(original, str(root), confine=confine)
    problem = images_lib.check(ref)
    if problem:
        is_file = not images_lib.is_inline(ref) and "://" not in ref
        raise ValueError(f"{problem}: {original} (looked for {ref})" if is_file else problem)
    if hint:
        return ref, hint[0], hint[1]
    try:
        height, width = images_lib.image_size(ref)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"unreadable image ({e}): {original[:120]}") from None
    return ref, width, height


def _sample(sample_id: str, index: int, source: str, ref: str, root: Path, prompt: str,
            targets: list[dict], meta: dict) -> Sample:
    record = {"id": sample_id, "messages": [
        {"role": "user", "content": [{"type": "image", "image": ref}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": grounding_answer(targets)}]}
    # ``ref`` was resolved (and confined) against ``root`` by _locate_image already: joined to
    # nothing here (joining a relative ref to ``root`` again would look in root/root/).
    sample = messages_to_sample(record, index, "", source, confine=False)
    sample.meta = meta
    return sample


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _expressions(value, column: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    texts = []
    for v in values:
        v = v.get("sent", v.get("raw")) if isinstance(v, dict) else v
        if isinstance(v, str) and v.strip():
            texts.append(v.strip())
    if not texts:
        raise ValueError(f"no referring expression (column {column!r} is empty)")
    return texts


# --- coco ------------------------------------------------------------------------------------


def read_coco(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    task = _task(cfg, ("per_image", "per_category"))
    template = _prompt(cfg, task)
    box_format = cfg.box_format or "xywh"
    path = Path(cfg.path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO instances file (expected an object with 'images', "
                        f"'annotations' and 'categories')")
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    names = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
    by_image = defaultdict(list)
    for ann in data.get("annotations", []):
        if isinstance(ann, dict) and not ann.get("iscrowd"):
            by_image[ann.get("image_id")].append(ann)

    samples = []
    for index, image in enumerate(data["images"]):
        sample_id = str(image.get("id", index)) if isinstance(image, dict) else str(index)
        try:
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                raise ValueError("image record has no 'file_name'")
            anns = by_image.get(image.get("id"), [])
            if not anns:
                continue  # no (non-crowd) objects: nothing to locate
            ref, width, height = _locate_image(image["file_name"], root,
                                               _size_hint(image.get("width"), image.get("height")),
                                               not cfg.allow_outside_root)
            objects = []  # (category id, label, pixel box)
            for ann in anns:
                label = names.get(ann.get("category_id"))
                if not isinstance(label, str) or not label:
                    raise ValueError(f"annotation {ann.get('id')}: category "
                                     f"{ann.get('category_id')!r} is not in 'categories'")
                try:
                    objects.append((ann.get("category_id"), label,
                                    pixel_box(ann.get("bbox"), box_format, width, height)))
                except ValueError as e:
                    raise ValueError(f"annotation {ann.get('id')}: {e}") from None
            groups = ([(sample_id, objects)] if task == "per_image" else
                      [(f"{sample_id}-{cat}", [o for o in objects if o[0] == cat])
                       for cat in dict.fromkeys(o[0] for o in objects)])  # first-seen order
            for group_id, group in groups:
                labels = list(dict.fromkeys(label for _, label, _ in group))
                prompt = template.format(labels=", ".join(labels), label=labels[0])
                targets = [target(box, label, "bbox", width, height) for _, label, box in group]
                meta = {"image_id": image.get("id"), "image_size": [width, height],
                        "boxes": [box for _, _, box in group], "labels": [lb for _, lb, _ in group]}
                samples.append(_sample(group_id, index, str(path), ref, root, prompt, targets, meta))
        except ValueError as e:
            bad.add(BadSample(str(path), index, sample_id, str(e)))
    return samples


# --- refcoco ---------------------------------------------------------------------------------


def read_refcoco(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    task = _task(cfg, ("bbox", "point"))
    template = _prompt(cfg, task)
    box_format = cfg.box_format or "xywh"
    if Path(cfg.path).suffix in (".json", ".jsonl"):
        return _refcoco_refs(cfg, bad, task, template, box_format)

    def row_samples(row, images, roles, index, sample_id, split):
        if not images:
            raise ValueError(f"missing image (column {roles['image']!r} is empty)")
        texts = _expressions(row[roles["expression"]], roles["expression"])
        hint = _size_hint(row.get(roles["width"]), row.get(roles["height"])) if roles["width"] else None
        ref, width, height = _locate_image(images[0], split.root, hint, not cfg.allow_outside_root)
        box = pixel_box(row[roles["bbox"]], box_format, width, height)
        meta = {k: v for k, v in row.items() if k != "segmentation"}  # polygons: not needed
        return [_sample(f"{sample_id}-{k}" if len(texts) > 1 else sample_id, index, split.where,
                        ref, Path(split.root), template.format(expression=text),
                        [target(box, text, task, width, height)],
                        {**meta, "expression": text, "image_size": [width, height],
                         "boxes": [box], "labels": [text]})
                for k, text in enumerate(texts)]

    return _read_hf_rows(cfg, bad, REFCOCO_ROLES, ("expression", "bbox"), row_samples)


def _refcoco_refs(cfg, bad, task, template, box_format) -> list[Sample]:
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"{path}: refs file not found")
    refs = dict(iter_records(path, bad))  # index -> ref; bad JSONL lines are recorded
    instances = _read_json(path.parent / "instances.json")
    if not isinstance(instances, dict):
        raise DataError(f"{path.parent / 'instances.json'}: not a COCO instances file")
    images = {im.get("id"): im for im in instances.get("images", []) if isinstance(im, dict)}
    anns = {a.get("id"): a for a in instances.get("annotations", []) if isinstance(a, dict)}
    splits = {r.get("split") for r in refs.values() if isinstance(r, dict)}
    if cfg.split not in splits:
        raise DataError(f"{path}: no refs of split {cfg.split!r}; splits here: "
                        f"{', '.join(sorted(map(str, splits)))}. Set the source's split.")
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    samples = []
    for index, ref in refs.items():
        if not isinstance(ref, dict) or ref.get("split") != cfg.split:
            continue
        sample_id = str(ref.get("ref_id", index))
        try:
            image, ann = images.get(ref.get("image_id")), anns.get(ref.get("ann_id"))
            if image is None or ann is None:
                raise ValueError(f"image {ref.get('image_id')} or annotation {ref.get('ann_id')} "
                                 f"is not in instances.json")
            texts = _expressions(ref.get("sentences"), "sentences")
            image_ref, width, height = _locate_image(
                str(image.get("file_name", "")), root,
                _size_hint(image.get("width"), image.get("height")), not cfg.allow_outside_root)
            box = pixel_box(ann.get("bbox"), box_format, width, height)
            for k, text in enumerate(texts):
                meta = {"ref_id": ref.get("ref_id"), "image_id": ref.get("image_id"),
                        "expression": text, "image_size": [width, height], "boxes": [box],
                        "labels": [text]}
                samples.append(_sample(f"{sample_id}-{k}", index, str(path), image_ref, root,
                                       template.format(expression=text),
                                       [target(box, text, task, width, height)], meta))
        except ValueError as e:
            bad.add(BadSample(str(path), index, sample_id, str(e)))
    return samples


# --- screenspot ------------------------------------------------------------------------------


def read_screenspot(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    task = _task(cfg, ("point", "bbox"))
    template = _prompt(cfg, task)
    if Path(cfg.path).suffix not in (".json", ".jsonl"):
        box_format = cfg.box_format or "xyxy_norm"

        def row_samples(row, images, roles, index, sample_id, split):
            if not images:
                raise ValueError(f"missing image (column {roles['image']!r} is empty)")
            hint = (_size_hint(row.get(roles["width"]), row.get(roles["height"]))
                    if roles["width"] else None)
            return [_screenspot_sample(row, row.get(roles["instruction"]), row.get(roles["bbox"]),
                                       images[0], hint, sample_id, index, split.where,
                                       Path(split.root), task, template, box_format,
                                       not cfg.allow_outside_root)]

        return _read_hf_rows(cfg, bad, SCREENSPOT_ROLES, ("instruction", "bbox"), row_samples)

    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    box_format = cfg.box_format or "xywh"
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    samples = []
    for index, record in iter_records(path, bad):  # a bad JSONL line is recorded, not fatal
        sample_id = str(record.get("id", index)) if isinstance(record, dict) else str(index)
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, got {type(record).__name__}")
            file_name = next((record[k] for k in ("img_filename", "image", "file_name")
                              if isinstance(record.get(k), str)), None)
            if file_name is None:
                raise ValueError("record has no image ('img_filename')")
            size = record.get("img_size")
            hint = _size_hint(*size) if isinstance(size, list) and len(size) == 2 else None
            samples.append(_screenspot_sample(
                record, record.get("instruction"), record.get("bbox"), file_name, hint,
                sample_id, index, str(path), root, task, template, box_format,
                not cfg.allow_outside_root))
        except ValueError as e:
            bad.add(BadSample(str(path), index, sample_id, str(e)))
    return samples


def _screenspot_sample(record, instruction, raw_box, image, hint, sample_id, index, source,
                       root, task, template, box_format, confine: bool = True) -> Sample:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("empty instruction")
    instruction = instruction.strip()
    ref, width, height = _locate_image(image, root, hint, confine)
    box = pixel_box(raw_box, box_format, width, height)
    meta = {k: v for k, v in record.items() if k not in ("bbox", "image")}
    meta.update(instruction=instruction, image_size=[width, height], boxes=[box],
                labels=[instruction])
    return _sample(sample_id, index, source, ref, root, template.format(instruction=instruction),
                   [target(box, instruction, task, width, height)], meta)


# --- Rows of a dataset read through `datasets` -----------------------------------------------


def _read_hf_rows(cfg, bad, roles_spec, required, row_samples) -> list[Sample]:
    """Open the split, map roles to columns, and turn each row into samples with
    ``row_samples(row, image_refs, roles, index, sample_id, split)``; a ValueError makes the
    row bad."""
    split = open_split(cfg)
    roles = resolve_columns(cfg, split, roles_spec)
    for role in ("image",) + tuple(required):
        if roles[role] is None:
            raise DataError(f"source {cfg.name}: no {role} column in {split.where}; set "
                            f"columns.{role}. Columns: {', '.join(split.columns)}")
    if split.image_kind(roles["image"]) is None:
        raise DataError(f"source {cfg.name}: column {roles['image']!r} holds no images; set "
                        f"columns.image")
    text_cols = [c for c in split.columns if split.image_kind(c) not in ("image", "images")
                 and c != roles["image"]]
    rows = split.text_rows(text_cols)
    refs = split.image_refs(roles["image"])
    samples = []
    for index, (row, images) in enumerate(zip(rows, refs)):
        raw_id = row.get(roles["id"]) if roles["id"] else None
        sample_id = str(raw_id) if raw_id is not None else str(index)
        try:
            samples.extend(row_samples(row, images, roles, index, sample_id, split))
        except ValueError as e:
            bad.add(BadSample(split.where, index, sample_id, str(e)))
    return samples
