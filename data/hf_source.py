"""Hugging Face datasets as a source (``format: hf_dataset``), and the ``hfrow://`` image scheme.

``SourceConfig.path`` is loaded exactly as for a real dataset: a local ``save_to_disk`` folder
(``dataset_dict.json`` or ``state.json`` inside) with ``datasets.load_from_disk``; any other
local folder or file (parquet, as downloaded from the hub, or arrow/json/csv) and anything else,
taken as a hub id, with ``datasets.load_dataset(path, subset, split=split)``. ``split`` picks
the split (a ``save_to_disk`` of a single ``Dataset`` has only one).

Columns are found by role (``SourceConfig.columns`` maps role -> column; unmapped roles are
guessed from common names, see ``ROLES``):

- ``image``: an Image feature, a list of images, or a path string (resolved against
  ``image_root``, default the dataset folder);
- ``question`` and ``answer``: one user turn (images first, then the question, or ``prompt``
  formatted with the row: ``"{question}\\nAnswer briefly."``; placeholders are the row's
  columns and the role names; literal braces are written ``{{ }}``) and one assistant turn.
  A list of answers (DocVQA ``answers``, ChartQA ``label``) trains on the first non-empty
  one; all are kept in ``meta["answers"]``;
- ``messages`` / ``conversations``: a column already holding a chat, in the messages layout
  (``role`` / ``content``; image parts without a reference take the row's images in order, the
  layout TRL's vision datasets use) or the LLaVA layout (``from`` / ``value`` with ``<image>``
  tags). These rows go through the JSON sources' converters in ``data.sources``, so they get
  the same checks and repair rules;
- ``id``: the sample id (default: the row number).

Images never enter Python memory when a source is read: each becomes an ``hfrow://``
reference naming an Arrow file of the dataset, the row in that file, the column and (for image
lists) the item. The files are memory-mapped once per process and a reference reads just its
own cell: ``ref_size`` parses only the image header, ``open_ref`` decodes the pixels when a
sample is encoded. References are plain strings, so they pickle into DataLoader workers, which
map the files again on first use.
"""

from __future__ import annotations

import bisect
import io
import os
import string
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pyarrow as pa

from data import images as images_lib
from data.config import SourceConfig
from data.samples import BadSample, BadSampleLog, DataError, Sample

SCHEME = "hfrow://"

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


# --- Loading a split -------------------------------------------------------------------------


def _is_image_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _list_item(t: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


@dataclass
class HFSplit:
    """One loaded split, Arrow-backed: text columns come out as Python values, images as
    ``hfrow://`` references (see ``image_refs``)."""

    dataset: object  # datasets.Dataset
    where: str  # "path [split]", for reports
    root: str  # relative image paths resolve here
    files: list[str]  # the Arrow files holding the rows, in row order
    starts: list[int]  # global row number of each file's first row

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def image_kind(self, column: str) -> str | None:
        """``image`` (one image struct), ``images`` (a list of them), ``path`` / ``paths``
        (file paths as strings), or None if the column holds no images."""
        t = self.dataset.data.schema.field(column).type
        item = _list_item(t)
        if _is_image_struct(t):
            return "image"
        if item is not None and _is_image_struct(item):
            return "images"
        if _is_string(t):
            return "path"
        if item is not None and _is_string(item):
            return "paths"
        return None

    def text_rows(self, columns: list[str]) -> list[dict]:
        """The rows restricted to ``columns`` (never image columns) as Python values."""
        return self.dataset.data.table.select(columns).to_pylist()

    def image_refs(self, column: str) -> list[list[str] | None]:
        """Per row: the image references of ``column`` (None where the cell is empty). Reads
        validity bitmaps and list lengths only, never image bytes. Path strings are returned
        as stored (they resolve against ``root``)."""
        kind = self.image_kind(column)
        chunked = self.dataset.data.table.column(column)
        if kind in ("path", "paths"):
            values = chunked.to_pylist()
            return [([v] if kind == "path" else list(v)) if v else None for v in values]
        refs: list[list[str] | None] = []
        row = 0
        for chunk in chunked.chunks:
            if kind == "image":
                present = chunk.is_valid().to_pylist()
                for ok in present:
                    refs.append([self._ref(row, column, None)] if ok else None)
                    row += 1
            else:  # a list of images per row
                lengths = [n if ok else 0 for n, ok in zip(
                    _list_lengths(chunk), chunk.is_valid().to_pylist())]
                for n in lengths:
                    refs.append([self._ref(row, column, k) for k in range(n)] if n else None)
                    row += 1
        return refs

    def _ref(self, row: int, column: str, item: int | None) -> str:
        i = bisect.bisect_right(self.starts, row) - 1
        return make_ref(self.files[i], row - self.starts[i], column, item)


def _list_lengths(chunk: pa.Array) -> list[int]:
    import pyarrow.compute as pc

    return [n or 0 for n in pc.list_value_length(chunk).to_pylist()]


FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json",
                 ".csv": "csv"}


def open_split(cfg: SourceConfig) -> HFSplit:
    """Load ``cfg.path`` / ``cfg.split`` with the ``datasets`` library (see module doc)."""
    import datasets

    path = Path(cfg.path).expanduser()
    where = f"{cfg.path} [{cfg.split}]"
    try:
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            saved = datasets.load_from_disk(str(path))
            if cfg.split not in saved:
                raise DataError(f"{cfg.path}: no split {cfg.split!r}; the saved dataset has "
                                f"{', '.join(saved)}. Set the source's split.")
            ds = saved[cfg.split]
        elif path.is_dir() and (path / "state.json").is_file():
            ds = datasets.load_from_disk(str(path))  # one saved Dataset: its only split
        elif path.is_file():  # one data file: its builder by suffix, the file is the split
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{cfg.path}: cannot read a {path.suffix or 'suffixless'} file as a "
                                f"dataset; give parquet, arrow, json(l) or csv, or a dataset folder")
            ds = datasets.load_dataset(builder, data_files={cfg.split: str(path)}, split=cfg.split,
                                       keep_in_memory=False)
        elif path.exists():
            ds = datasets.load_dataset(str(path), cfg.subset, split=cfg.split, keep_in_memory=False)
        elif cfg.path.startswith((".", "/", "~")):
            raise DataError(f"{cfg.path}: dataset folder not found")
        else:  # a hub id
            ds = datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split, keep_in_memory=False)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"{cfg.path}: cannot load split {cfg.split!r} with the datasets "
                        f"library: {e}") from None
    if isinstance(ds, datasets.DatasetDict):  # load_from_disk of a dict without the marker file
        ds = ds[cfg.split]
    files, starts = _arrow_files(ds)
    if files is None:  # rows are a selection of the files' rows (split slice, indices mapping)
        ds = ds.select(range(len(ds))).flatten_indices()
        files, starts = _arrow_files(ds)
        if files is None:
            raise DataError(f"{cfg.path}: the dataset is not backed by Arrow files on disk; "
                            f"save it with save_to_disk and point the source there")
    root = cfg.image_root or str(path if path.is_dir() else path.parent)
    return HFSplit(ds, where, root, files, starts)


def _arrow_files(ds) -> tuple[list[str], list[int]] | tuple[None, None]:
    """The Arrow files whose rows, in order, are exactly the dataset's rows, with each file's
    first row; (None, None) when the dataset maps or slices rows."""
    if getattr(ds, "_indices", None) is not None or not ds.cache_files:
        return None, None
    files = [os.path.abspath(f["filename"]) for f in ds.cache_files]
    starts, total = [], 0
    for f in files:
        starts.append(total)
        total += _table(f).num_rows
    return (files, starts) if total == len(ds) else (None, None)


# --- The hfrow:// scheme (registered in data.images.SCHEMES) ---------------------------------

_CACHE_SIZE = 128  # open files per process; mapping is cheap, so eviction is too
_lock = threading.Lock()
_tables: OrderedDict = OrderedDict()  # (pid, path) -> memory-mapped pyarrow Table


def make_ref(arrow_file: str, row: int, column: str, item: int | None = None) -> str:
    """``hfrow:///abs/file.arrow#ROW/COLUMN[/ITEM]``; ROW counts from the file's first row."""
    tail = f"/{item}" if item is not None else ""
    return f"{SCHEME}{quote(arrow_file)}#{row}/{quote(column, safe='')}{tail}"


def parse_ref(ref: str) -> tuple[str, int, str, int | None]:
    """(arrow file, row in it, column, list item or None) of an ``hfrow://`` reference."""
    body, sep, fragment = ref[len(SCHEME):].rpartition("#")
    parts = fragment.split("/")
    try:
        if not sep or len(parts) not in (2, 3):
            raise ValueError
        item = int(parts[2]) if len(parts) == 3 else None
        return unquote(body), int(parts[0]), unquote(parts[1]), item
    except ValueError:
        raise ValueError(f"malformed dataset image reference {ref[:120]!r} (expected "
                         f"{SCHEME}/path/file.arrow#ROW/COLUMN[/ITEM])") from None


def _table(path: str) -> pa.Table:
    """The Arrow file memory-mapped (zero-copy), cached per process."""
    key = (os.getpid(), path)
    with _lock:
        if key in _tables:
            _tables.move_to_end(key)
            return _tables[key]
    source = pa.memory_map(path)
    try:
        table = pa.ipc.open_stream(source).read_all()  # what `datasets` writes
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(source).read_all()
    with _lock:
        _tables[key] = table
        while len(_tables) > _CACHE_SIZE:
            _tables.popitem(last=False)
    return table


def _cell(ref: str):
    """The image struct scalar a reference points at; ValueError says why it cannot be read."""
    path, row, column, item = parse_ref(ref)
    if not os.path.isfile(path):
        raise ValueError(f"dataset file not found: {path}")
    table = _table(path)
    if column not in table.column_names or not 0 <= row < table.num_rows:
        raise ValueError(f"no row {row} / column {column!r} in {path}")
    cell = table.column(column)[row]
    if item is not None:
        values = cell.values if cell.is_valid else None
        if values is None or not 0 <= item < len(values):
            raise ValueError(f"missing image: row {row} of {path} has no image {item} in "
                             f"column {column!r}")
        cell = values[item]
    if not cell.is_valid:
        raise ValueError(f"missing image: column {column!r} is empty")
    return cell


def _image_file(ref: str, zero_copy: bool = False):
    """A binary file object over the image's encoded bytes (or its path on disk). With
    ``zero_copy`` it reads the memory-mapped file in place (enough for a header)."""
    cell = _cell(ref)
    data = cell["bytes"]
    if not data.is_valid:
        return _path_of(cell, ref)
    return pa.BufferReader(data.as_buffer()) if zero_copy else io.BytesIO(data.as_py())


def check_ref(ref: str) -> str | None:
    """Why the reference cannot be an image, or None. Cheap: validity bits and the path
    field are read, the image bytes are not."""
    try:
        cell = _cell(ref)
        if not cell["bytes"].is_valid:
            _path_of(cell, ref)
    except ValueError as e:
        return str(e)
    return None


def _path_of(cell, ref: str) -> str:
    """The file an image cell without bytes points at (as `datasets` stores local images)."""
    path = cell["path"].as_py() if cell.type.get_field_index("path") >= 0 else None
    if path and os.path.isfile(path):
        return path
    raise ValueError(f"missing image: no bytes in column {parse_ref(ref)[2]!r}"
                     + (f" and its path is not a file: {path}" if path else ""))


def open_ref(ref: str):
    from PIL import Image

    return Image.open(_image_file(ref))


def ref_size(ref: str) -> tuple[int, int]:
    """(height, width) from the image header, read in place: no pixels decoded, no bytes
    copied (a 4.5 MB PNG: 40 us, against 340 us through a copy)."""
    from PIL import Image

    with Image.open(_image_file(ref, zero_copy=True)) as im:
        width, height = im.size
    return height, width


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


def template_fields(template: str) -> set[str]:
    """The placeholder names of a ``str.format`` template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"prompt {template!r} is not a valid template: {e}") from None
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in parsed if name}


def answer_list(value, column: str) -> list[str]:
    """A str, number or list of them -> the non-empty answers; ValueError if none."""
    if value is None:
        raise ValueError(f"missing answer (column {column!r} is empty)")
    values = value if isinstance(value, list) else [value]
    answers = [str(v).strip() for v in values if v is not None and str(v).strip()]
    if not answers:
        raise ValueError(f"empty answer (column {column!r})")
    return answers


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
                sample = _chat_row(row[chat_col], images or [], chat_col, sample_id, index, split)
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
                        f"feature, a list of images or path strings); set columns.image")
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
    from data.sources import _messages_to_sample

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
    sample = _messages_to_sample(record, index, Path(split.root), split.where)
    sample.meta = {**row, "answers": answers}
    return sample


def _chat_row(turns, images: list[str], column: str, sample_id: str, index: int,
              split: HFSplit) -> Sample:
    """A chat cell in the LLaVA (``from``/``value``) or messages (``role``/``content``) layout,
    through the JSON sources' converters."""
    from data.sources import _llava_to_sample, _messages_to_sample

    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        raise ValueError(f"column {column!r} holds no list of turns")
    root = Path(split.root)
    if turns[0].get("from") is not None:
        record = {"id": sample_id, "image": images, "conversations": turns}
        return _llava_to_sample(record, index, root, split.where)
    messages = [_drop_nulls(t) for t in turns]
    pending = list(images)
    n_slots = 0
    for m in messages:
        if isinstance(m.get("content"), list):
            m["content"] = [_drop_nulls(p) for p in m["content"]]
            for part in m["content"]:
                if isinstance(part, dict) and part.get("type") == "image" and "image" not in part:
                    n_slots += 1
                    if pending:
                        part["image"] = pending.pop(0)
    if n_slots == 0 and images:
        # Repair rule (as for LLaVA records): images without image parts go before the first
        # user text.
        first_user = next((m for m in messages if m.get("role") == "user"), None)
        if first_user is None:
            raise ValueError("no user turn to hold the row's images")
        text = first_user.get("content")
        parts = text if isinstance(text, list) else ([{"type": "text", "text": text}] if text else [])
        first_user["content"] = [{"type": "image", "image": r} for r in images] + parts
    elif n_slots != len(images):
        raise ValueError(f"{n_slots} image parts in column {column!r} but {len(images)} images")
    record = {"id": sample_id, "messages": messages}
    return _messages_to_sample(record, index, root, split.where)


def _drop_nulls(d):
    """Arrow gives every struct field to every row (``{"type": "text", "image": None}``)."""
    return {k: v for k, v in d.items() if v is not None} if isinstance(d, dict) else d
