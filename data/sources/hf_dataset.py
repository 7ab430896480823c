"""Hugging Face datasets as a source (``format: hf_dataset``).

``SourceConfig.path`` is loaded exactly as for a real dataset: a local ``save_to_disk`` folder
(``dataset_dict.json`` or ``state.json`` inside) with ``datasets.load_from_disk``; any other
local folder or file (parquet, as downloaded from the hub, or arrow/json/csv) and anything else,
taken as a hub id, with ``datasets.load_dataset(path, subset, split=split)``. ``split`` picks
the split (a ``save_to_disk`` of a single ``Dataset`` has only one).

Columns are found by role (``SourceConfig.columns`` maps role -> column; unmapped roles are
guessed from common names, see ``ROLES``):

- ``image``: an Image feature or any ``{bytes, path}`` struct, raw encoded bytes (a
  ``binary`` column), a list of these, or a path string (resolved against ``image_root``,
  default the dataset folder);
- ``question`` and ``answer``: one user turn (images first, then the question, or ``prompt``
  formatted with the row: ``"{question}\\nAnswer briefly."``; placeholders are the row's
  columns and the role names; literal braces are written ``{{ }}``) and one assistant turn.
  A list of answers (DocVQA ``answers``, ChartQA ``label``) trains on the first non-empty
  one; all are kept in ``meta["answers"]``;
- ``messages`` / ``conversations``: a column already holding a chat, in the messages layout
  (``role`` / ``content``; image parts without a reference take the row's images in order, the
  layout TRL's vision datasets use) or the LLaVA layout (``from`` / ``value`` with ``<image>``
  tags). These rows go through the chat converters of ``data.sources.chat``, so they get the
  same checks and repair rules;
- ``id``: the sample id (default: the row number).

Images never enter Python memory when a source is read: each becomes an ``hfrow://``
reference (``data.media.dataset_images``) naming the dataset, the row, the column and (for image
lists) the item; its pixels are decoded when the sample is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from data.config import SourceConfig
from data.media import dataset_images
from data.samples import BadSample, BadSampleLog, DataError, Sample
from data.sources.chat import llava_to_sample, messages_to_sample
from data.sources.media_refs import MediaRoots
from data.sources.records import answer_list, template_fields

# role -> column names tried in order when ``columns`` does not name one.
ROLES = {
    "image": ("image", "images", "img", "decoded_image"),
    "question": ("question", "query", "problem"),
    "answer": ("answer", "answers", "label"),
    "messages": ("messages",),
    "conversations": ("conversations",),
    "id": ("id", "question_id", "questionId"),
}
CHAT_ROLES = ("messages", "conversations")
SCAN_ROWS = 1024  # rows per Arrow batch when scanning an image column's validity


# --- Loading a split -------------------------------------------------------------------------


def _is_image_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _is_image_cell(t: pa.DataType) -> bool:
    """An encoded image: a ``{bytes, path}`` struct (the Image feature, or a plain struct) or
    raw bytes (a ``binary`` column: how many parquet exports store images, with no feature
    metadata to say so)."""
    return _is_image_struct(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _list_item(t: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


@dataclass
class HFSplit:
    """One loaded split: text columns come out as Python values, images as ``hfrow://``
    references (see ``image_refs``)."""

    dataset: object  # datasets.Dataset
    where: str  # "path [split]", for reports
    root: str  # relative image paths resolve here
    path: str  # how the split was opened, for its image references
    split: str
    subset: str | None

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def image_kind(self, column: str) -> str | None:
        """``image`` (one encoded image: a ``{bytes, path}`` struct or raw bytes), ``images``
        (a list of them), ``path`` / ``paths`` (file paths as strings), or None if the column
        holds no images."""
        t = self.dataset.features.arrow_schema.field(column).type
        item = _list_item(t)
        if _is_image_cell(t):
            return "image"
        if item is not None and _is_image_cell(item):
            return "images"
        if _is_string(t):
            return "path"
        if item is not None and _is_string(item):
            return "paths"
        return None

    def text_rows(self, columns: list[str]) -> list[dict]:
        """The rows restricted to ``columns`` (never image columns) as Python values."""
        if not columns:
            return [{} for _ in range(len(self.dataset))]
        return self.dataset.select_columns(columns).to_list()

    def image_refs(self, column: str) -> list[list[str] | None]:
        """Per row: the image references of ``column`` (None where the cell is empty). Reads
        validity bitmaps and list lengths only, never image bytes. Path strings are returned
        as stored (they resolve against ``root``)."""
        kind = self.image_kind(column)
        view = self.dataset.select_columns([column]).with_format("arrow")
        refs: list[list[str] | None] = []
        for batch in view.iter(batch_size=SCAN_ROWS):
            chunk = batch.column(column)
            if kind in ("path", "paths"):
                refs += [([v] if kind == "path" else list(v)) if v else None
                         for v in chunk.to_pylist()]
                continue
            present = chunk.is_valid().to_pylist()
            lengths = [1] * len(present) if kind == "image" else _list_lengths(chunk)
            for ok, n in zip(present, lengths):
                row = len(refs)
                if not ok or not n:
                    refs.append(None)
                elif kind == "image":
                    refs.append([self._ref(row, column, None)])
                else:
                    refs.append([self._ref(row, column, k) for k in range(n)])
        return refs

    def _ref(self, row: int, column: str, item: int | None) -> str:
        return dataset_images.make_ref(self.path, self.split, self.subset, row, column, item)


def _list_lengths(chunk) -> list[int]:
    import pyarrow.compute as pc

    return [n or 0 for n in pc.list_value_length(chunk).to_pylist()]


def open_split(cfg: SourceConfig) -> HFSplit:
    """Load ``cfg.path`` / ``cfg.split`` with the ``datasets`` library (see module doc)."""
    ds = dataset_images.open_dataset(cfg.path, cfg.split, cfg.subset)
    path = Path(cfg.path).expanduser()
    root = cfg.image_root or str(path if path.is_dir() else path.parent)
    return HFSplit(ds, f"{cfg.path} [{cfg.split}]", root, cfg.path, cfg.split, cfg.subset)


# --- The hf_dataset source --------------------------------------------------------------------


def resolve_columns(cfg: SourceConfig, split: HFSplit, roles: dict[str, tuple[str, ...]]
                    ) -> dict[str, str | None]:
    """role -> column: ``cfg.columns`` where given (checked against the dataset), else the
    first guess present in the dataset, else None."""
    unknown = sorted(set(cfg.columns) - set(roles))
    if unknown:
        raise DataError(f"source {cfg.name}: unknown column role {unknown[0]!r} in columns; "
                        f"roles of format {cfg.format}: {', '.join(roles)}")
    found = {}
    for role, guesses in roles.items():
        if role in cfg.columns:
            if cfg.columns[role] not in split.columns:
                raise DataError(f"source {cfg.name}: columns.{role}={cfg.columns[role]!r} is not "
                                f"a column of {split.where}; its columns: "
                                f"{', '.join(split.columns)}")
            found[role] = cfg.columns[role]
        else:
            found[role] = next((c for c in guesses if c in split.columns), None)
    return found


def read_hf_dataset(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    """``format: hf_dataset`` (see the module doc)."""
    if cfg.task is not None:
        raise DataError(f"source {cfg.name}: format hf_dataset takes no task (got {cfg.task!r}); "
                        f"the columns say what the sample is")
    split = open_split(cfg)
    roles = resolve_columns(cfg, split, ROLES)
    image_col, chat_col = roles["image"], roles["messages"] or roles["conversations"]
    text_cols = _check_roles(cfg, split, roles)
    rows = split.text_rows(text_cols)
    refs = split.image_refs(image_col) if image_col else [None] * len(rows)
    samples = []
    for index, (row, images) in enumerate(zip(rows, refs)):
        raw_id = row[roles["id"]] if roles["id"] else None
        sample_id = str(raw_id) if raw_id is not None else str(index)
        try:
            if chat_col:
                sample = _chat_row(row[chat_col], images or [], chat_col, sample_id, index, split,
                                   not cfg.allow_outside_root)
                sample.meta = {k: v for k, v in row.items() if k != chat_col}
            else:
                if image_col and not images:
                    raise ValueError(f"missing image (column {image_col!r} is empty)")
                sample = _qa_row(cfg, roles, row, images or [], sample_id, index, split)
        except ValueError as e:
            bad.add(BadSample(split.where, index, sample_id, str(e)))
            continue
        samples.append(sample)
    return samples


def _check_roles(cfg: SourceConfig, split: HFSplit, roles: dict) -> list[str]:
    """Config mistakes stop the run before any row is read, naming the dataset's columns.
    Returns the columns read as text (every column but images)."""
    image_col, chat_col = roles["image"], roles["messages"] or roles["conversations"]
    columns = ", ".join(split.columns)
    if image_col is not None and split.image_kind(image_col) is None:
        raise DataError(f"source {cfg.name}: column {image_col!r} holds no images (an Image "
                        f"feature, image bytes, a list of images or path strings); set "
                        f"columns.image")
    shared = [r for r, c in roles.items() if r != "image" and c is not None and c == image_col]
    if shared:
        raise DataError(f"source {cfg.name}: column {image_col!r} is both the image and the "
                        f"{shared[0]} column; map columns.image and columns.{shared[0]} apart")
    if chat_col and any(r in cfg.columns for r in ("question", "answer")):
        raise DataError(f"source {cfg.name}: set either a chat column (messages/conversations) "
                        f"or question/answer columns, not both")
    if not chat_col and roles["answer"] is None:
        raise DataError(f"source {cfg.name}: no answer column in {split.where}; set "
                        f"columns.answer (or columns.messages). Columns: {columns}")
    text_cols = [c for c in split.columns
                 if c != image_col and split.image_kind(c) not in ("image", "images")]
    if cfg.prompt is not None:
        allowed = set(text_cols) | {r for r in ("question", "answer", "id") if roles[r]}
        unknown = sorted(template_fields(cfg.prompt) - allowed)
        if unknown:
            raise DataError(f"source {cfg.name}: prompt placeholder {{{unknown[0]}}} is neither "
                            f"a column nor a mapped role; columns: {columns}")
    elif not chat_col and roles["question"] is None:
        raise DataError(f"source {cfg.name}: no question column in {split.where}; set "
                        f"columns.question or a prompt. Columns: {columns}")
    return text_cols


def _qa_row(cfg, roles, row, images, sample_id, index, split) -> Sample:
    answers = answer_list(row[roles["answer"]], roles["answer"])
    question = row[roles["question"]] if roles["question"] else None
    if cfg.prompt is not None:
        # Placeholders: the row's columns, and the role names (which win).
        fields = {k: "" if v is None else v for k, v in row.items()}
        fields.update(question="" if question is None else question, answer=answers[0],
                      id=sample_id)
        text = cfg.prompt.format(**fields)
    else:
        text = "" if question is None else str(question)
    if not text.strip():
        raise ValueError(f"empty question (column {roles['question']!r})")
    content = [{"type": "image", "image": ref} for ref in images] + [{"type": "text", "text": text}]
    record = {"id": sample_id, "messages": [{"role": "user", "content": content},
                                            {"role": "assistant", "content": answers[0]}]}
    sample = messages_to_sample(record, index, Path(split.root), split.where,
                                confine=not cfg.allow_outside_root)
    sample.meta = {**row, "answers": answers}
    return sample


def _chat_row(turns, images: list[str], column: str, sample_id: str, index: int,
              split: HFSplit, confine: bool = True) -> Sample:
    """A chat cell in the LLaVA (``from``/``value``) or messages (``role``/``content``) layout,
    with the row's images as the record's image list, through the chat converters: they go
    where ``<image>`` tags or bare image parts stand, else before the first user text, and a
    count that differs is a bad sample (never an image dropped, or a tag left as text)."""
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        raise ValueError(f"column {column!r} holds no list of turns")
    roots = MediaRoots.of(Path(split.root), confine)
    if turns[0].get("from") is not None:
        record = {"id": sample_id, "image": images, "conversations": turns}
        return llava_to_sample(record, index, roots, split.where)
    messages = []
    for turn in turns:
        turn = _drop_nulls(turn)
        if isinstance(turn, dict) and isinstance(turn.get("content"), list):
            turn["content"] = [_drop_nulls(part) for part in turn["content"]]
        messages.append(turn)
    record = {"id": sample_id, "messages": messages, **({"images": images} if images else {})}
    return messages_to_sample(record, index, roots, split.where)


def _drop_nulls(d):
    """Arrow gives every struct field to every row (``{"type": "text", "image": None}``)."""
    return {k: v for k, v in d.items() if v is not None} if isinstance(d, dict) else d
