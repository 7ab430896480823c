"""Images inside a Hugging Face dataset, as lazy ``hfrow://`` references (registered in
``data.media.images.SCHEMES``).

A reference names how the dataset was opened (a local path or a hub id, the split, the
config), the row, the image column and, for a list of images, the item::

    hfrow://<quoted path>?split=<split>&subset=<config>#<row>/<column>[/<item>]

Everything goes through the ``datasets`` library: ``open_dataset`` loads the split as for a
real dataset, once per process, and a cell is read with ``Dataset.with_format("arrow")``, which
slices the memory-mapped Arrow table. So rows are the dataset's own (split slices and index
mappings are datasets' business), an image is never decoded when only its header is read
(``ref_size``), and references are plain strings that pickle into DataLoader workers, which
open the dataset again on first use.

An image cell is a ``{bytes, path}`` struct (the ``datasets`` Image feature, or a plain struct
in a parquet file) or raw encoded bytes (a ``binary`` column, as many parquet exports store
images); a struct without bytes names a file, absolute or relative to the dataset's folder.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode

import pyarrow as pa

from data.media import images as images_lib
from data.media.cache import ProcessCache
from data.samples import DataError

SCHEME = "hfrow://"
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json",
                 ".csv": "csv"}
_datasets = ProcessCache(16)  # (location, split, subset) -> datasets.Dataset
_columns = ProcessCache(128)  # (location, split, subset, column) -> one column, Arrow-formatted


# --- Opening a split -------------------------------------------------------------------------

def location(path: str) -> str:
    """How a dataset path is written in references: absolute for local data, else the hub id."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def open_dataset(path: str, split: str, subset: str | None = None):
    """The split as ``datasets`` loads it (cached per process): a ``save_to_disk`` folder with
    ``load_from_disk``; a single data file by its suffix's builder (the file is the split); any
    other folder or a hub id with ``load_dataset``. Raises DataError naming the path."""
    return _datasets.get((location(path), split, subset), lambda: _load(path, split, subset))


def _load(path_text: str, split: str, subset: str | None):
    import datasets

    path = Path(path_text).expanduser()
    try:
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            saved = datasets.load_from_disk(str(path))
            if split not in saved:
                raise DataError(f"{path_text}: no split {split!r}; the saved dataset has "
                                f"{', '.join(saved)}. Set the source's split.")
            return saved[split]
        if path.is_dir() and (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))  # one saved Dataset: its only split
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path_text}: cannot read a {path.suffix or 'suffixless'} file as a "
                                f"dataset; give parquet, arrow, json(l) or csv, or a dataset folder")
            return datasets.load_dataset(builder, data_files={split: str(path)}, split=split,
                                         keep_in_memory=False)
        if not path.exists() and path_text.startswith((".", "/", "~")):
            raise DataError(f"{path_text}: dataset folder not found")
        # A dataset folder in a hub layout (parquet files), or a hub id.
        ds = datasets.load_dataset(str(path) if path.exists() else path_text, subset, split=split,
                                   keep_in_memory=False)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"{path_text}: cannot load split {split!r} with the datasets "
                        f"library: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split]
    return ds


def _column(where: tuple, column: str):
    return _columns.get((*where, column), lambda: open_dataset(*where).select_columns(
        [column]).with_format("arrow"))


# --- References ------------------------------------------------------------------------------

def make_ref(path: str, split: str, subset: str | None, row: int, column: str,
             item: int | None = None) -> str:
    query = urlencode({"split": split, **({"subset": subset} if subset is not None else {})})
    tail = f"/{item}" if item is not None else ""
    return f"{SCHEME}{quote(location(path))}?{query}#{row}/{quote(column, safe='')}{tail}"


def parse_ref(ref: str) -> tuple[tuple, int, str, int | None]:
    """((path, split, subset), row, column, list item or None) of an ``hfrow://`` reference."""
    body, sep, fragment = ref[len(SCHEME):].rpartition("#")
    path, _, query = body.partition("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    parts = fragment.split("/")
    try:
        if not sep or "split" not in params or len(parts) not in (2, 3):
            raise ValueError
        item = int(parts[2]) if len(parts) == 3 else None
        where = (unquote(path), params["split"], params.get("subset"))
        return where, int(parts[0]), unquote(parts[1]), item
    except ValueError:
        raise ValueError(f"malformed dataset image reference '{images_lib.short_ref(ref)}' "
                         f"(expected {SCHEME}PATH?split=SPLIT#ROW/COLUMN[/ITEM])") from None


def _cell(ref: str):
    """The image cell a reference points at (a ``{bytes, path}`` struct or raw encoded bytes);
    ValueError says why it cannot be read."""
    where, row, column, item = parse_ref(ref)
    try:
        view = _column(where, column)
    except DataError as e:
        raise ValueError(str(e)) from None
    except (KeyError, ValueError):
        raise ValueError(f"no column {column!r} in {where[0]} [{where[1]}]") from None
    if not 0 <= row < len(view):
        raise ValueError(f"no row {row} in {where[0]} [{where[1]}]")
    cell = view[row].column(column)[0]
    if item is not None:
        values = cell.values if cell.is_valid else None
        if values is None or not 0 <= item < len(values):
            raise ValueError(f"missing image: row {row} of {where[0]} has no image {item} in "
                             f"column {column!r}")
        cell = values[item]
    if not cell.is_valid:
        raise ValueError(f"missing image: column {column!r} is empty")
    return cell


def describe(ref: str) -> str:
    """Where a reference's image is, in words for messages: its row, column and dataset."""
    try:
        where, row, column, item = parse_ref(ref)
    except ValueError:
        return images_lib.short_ref(ref)
    image = f"image {item} of " if item is not None else "image in "
    return f"{image}row {row}, column {column!r} of {where[0]} [{where[1]}]"


def _encoded_bytes(cell):
    """The encoded image bytes of a cell (a binary scalar), or None when it holds only a path.
    A cell is raw bytes (a ``binary`` column, as many parquet exports store images) or a
    struct with a ``bytes`` field (the ``datasets`` Image feature, or a plain struct)."""
    if pa.types.is_struct(cell.type):
        if cell.type.get_field_index("bytes") < 0:
            return None
        cell = cell["bytes"]
    return cell if cell.is_valid else None


def _image_source(ref: str) -> tuple[Callable[[], object], int]:
    """(a function giving a fresh binary file over the image's encoded bytes, or its path on
    disk; the byte count). The bytes are copied out of the memory-mapped table: pyarrow's
    in-place reader cannot seek past its end, which PIL's format probes do on short data."""
    cell = _cell(ref)
    data = _encoded_bytes(cell)
    if data is None:
        path = _path_of(cell, ref)
        return (lambda: path), os.path.getsize(path)
    buffer = data.as_buffer()
    return (lambda: io.BytesIO(buffer.to_pybytes())), buffer.size


def _path_of(cell, ref: str) -> str:
    """The file an image cell without bytes points at (as ``datasets`` stores local images):
    absolute, or relative to the dataset's folder."""
    has_path = pa.types.is_struct(cell.type) and cell.type.get_field_index("path") >= 0
    path = cell["path"].as_py() if has_path else None
    if path and not os.path.isabs(path):
        path = os.path.join(_dataset_folder(parse_ref(ref)[0][0]), path)
    if path and os.path.isfile(path):
        return path
    raise ValueError(f"missing image: no bytes in column {parse_ref(ref)[2]!r}"
                     + (f" and its path is not a file: {path}" if path else ""))


def _dataset_folder(where: str) -> str:
    """The folder relative image paths of a dataset resolve against: the dataset folder, or
    the folder of a single data file (a hub id: the working directory, as ``datasets`` does)."""
    if os.path.isdir(where):
        return where
    return os.path.dirname(where) if os.path.isfile(where) else ""


# --- The data.media.images scheme interface ----------------------------------------------------

def check_ref(ref: str) -> str | None:
    """Why the reference cannot be an image, or None. Cheap: validity bits and the path
    field are read, the image bytes are not."""
    try:
        cell = _cell(ref)
        if _encoded_bytes(cell) is None:
            _path_of(cell, ref)
    except ValueError as e:
        return str(e)
    return None


def open_ref(ref: str):
    """The image as viewers show it (EXIF orientation applied), lazily decoded when upright.
    Raises MediaError (a ValueError) naming the row for an image that cannot be used."""
    from PIL import Image

    name = describe(ref)
    source, nbytes = _image_source(ref)
    if nbytes == 0:
        raise images_lib.MediaError(f"empty image file (0 bytes): {name}")
    with images_lib.pil_errors(name):
        im = Image.open(source())
        images_lib.check_pixels(*im.size, name)
        return images_lib.upright(im)


@lru_cache(maxsize=65536)
def ref_size(ref: str) -> tuple[int, int]:
    """The displayed (height, width) from the image header, no pixels decoded, with the checks
    of ``data.media.images.header_size`` (MediaError). Cached per reference, as the dataset
    itself is (the planner asks again for every budget it tries)."""
    from PIL import Image

    source, nbytes = _image_source(ref)
    return images_lib.header_size(lambda: Image.open(source()), describe(ref), nbytes)
