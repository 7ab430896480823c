"""Document corpora: PDFs and folders of page images become page-image samples.

``format: pdf`` — ``path`` is one of
  - a PDF file, or a folder of PDFs (searched recursively, natural order): one transcription
    sample per page;
  - a JSON list / JSONL annotation file whose records reference PDFs (relative to
    ``image_root``, default the file's folder)::

      {"id": "q1", "pdf": "a.pdf", "pages": [1, 2] or "1-3", "question": "...", "answer": "..."}

    ``answers`` (a list) may replace ``answer`` (the first is the target, all are kept in
    ``meta`` for eval). Instead of question/answer a record may hold ``conversations``
    (LLaVA) or ``messages`` (string content, or parts where ``{"type": "image"}`` is a page)
    with one ``<image>`` tag per page; without tags the pages go before the first user text.
    With a transcription task, each listed page of each record becomes a transcription sample.

``format: page_images`` — ``path`` is a folder of documents, each a sub-folder of page images
(png/jpg/webp/bmp/tif/gif; page order is the natural sort of file names, so ``page_2`` comes
before ``page_10``); a folder holding images itself is one document too. Transcriptions are
sidecars next to each image (``page_001.md`` / ``.txt`` / ``.html`` beside ``page_001.png``).
Questions live in ``qa.jsonl``: in a document's folder (records as above, without ``pdf``),
or in the top folder with ``"doc": "<sub-folder>"``; pages are named by number (``pages``)
or by file name (``images``).

Tasks (``SourceConfig.task``): ``qa`` — a multi-page record becomes one multi-image sample,
pages in order, then the question (default for annotation files); ``transcribe_markdown``
(default otherwise), ``transcribe_text``, ``transcribe_html`` — one sample per page. A
transcription target is the first existing sidecar, for page 3 of ``a.pdf``: ``a.p3.md`` next
to the PDF, else ``a/page_003.md``; markdown also accepts ``.txt`` sidecars (plain text is
valid Markdown), html accepts ``.html`` / ``.htm``. Without a sidecar, markdown and text fall
back to the PDF's own text layer; html does not (a text layer is not HTML). ``prompt``
replaces the task's default instruction; for ``qa`` it is put on a line before each question.

Pages (``SourceConfig.pages`` or a record's ``pages``): 1-based, like PDF viewers; ``"1-3,7"``,
``"5-"`` (page 5 to the last), or a list of numbers; listed order is kept. PDF pages render at
``SourceConfig.dpi`` (72 points per inch) as lazy ``pdfpage://`` references (data/media/pdfpages.py):
nothing is rendered until a sample is encoded.

Bad input becomes a ``BadSample`` naming the file, record index and reason: missing, empty,
corrupt or encrypted PDFs; pages past the end (the reason names the file and its page count);
pages without a transcription target; sidecars without their page image; page images named by
a record but missing. A sidecar that is not UTF-8 is skipped, not repaired: decoding with
replacement characters would teach the model to emit U+FFFD (a UTF-8 byte-order mark is fine).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from data.config import SourceConfig
from data.media import images as images_lib
from data.media import pdfpages
from data.samples import BadSample, BadSampleLog, DataError, Sample
from data.sources.chat import llava_to_sample
from data.sources.records import read_records

TASK_PROMPTS = {
    "qa": None,  # the record's question is the prompt
    "transcribe_markdown": "Transcribe this page to Markdown.",
    "transcribe_text": "Transcribe all the text on this page, in reading order.",
    "transcribe_html": "Transcribe this page to HTML.",
}
SIDECAR_SUFFIXES = {"transcribe_markdown": (".md", ".txt"), "transcribe_text": (".txt",),
                    "transcribe_html": (".html", ".htm")}
TEXT_LAYER_TASKS = ("transcribe_markdown", "transcribe_text")
PAGE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ANNOTATION_SUFFIXES = (".json", ".jsonl")
QA_FILE = "qa.jsonl"


# --- pages, names and sidecars ----------------------------------------------------------------

def parse_pages(spec) -> list[tuple[int, int | None]]:
    """1-based (first, last) ranges from ``"1-3,7"``, ``"5-"`` (last = None: to the end), a
    number or a list of numbers."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in spec):
        ranges = [(p, p) for p in spec]
    elif isinstance(spec, str) and spec.strip():
        ranges = []
        for part in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?", part)
            if not m:
                raise ValueError(f"pages {spec!r}: expected 1-based page numbers and ranges like "
                                 f"'1-3,7' or '5-'")
            first = int(m[1])
            ranges.append((first, first if not m[2] else int(m[3]) if m[3] else None))
    else:
        raise ValueError(f"pages must be a string like '1-3,7' or a list of page numbers, "
                         f"got {json.dumps(spec)[:60]}")
    for first, last in ranges:
        if first < 1 or (last is not None and last < first):
            raise ValueError(f"pages {spec!r}: page numbers start at 1 and ranges go up "
                             f"(got {first}-{last if last is not None else ''})")
    return ranges


def select_pages(ranges: list[tuple[int, int | None]] | None, n_pages: int,
                 where: str) -> tuple[list[int], str | None]:
    """The requested pages that exist (listed order; all pages when ``ranges`` is None) and a
    reason naming ``where`` and its page count if some requested pages are past the end."""
    pages, missing = [], []
    for first, last in ranges or [(1, None)]:
        last = max(n_pages, first) if last is None else last
        pages += range(first, min(last, n_pages) + 1)
        missing += range(max(first, n_pages + 1), last + 1)
    if not missing:
        return pages, None
    more = f" ({len(missing)} requested pages past the end)" if len(missing) > 1 else ""
    return pages, f"page {missing[0]} out of range: {where} has {n_pages} pages{more}"


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: page_2 before page_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_sidecar(path: Path) -> str:
    """A transcription file as text; ValueError when empty or not UTF-8 (see module doc)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"transcription is not UTF-8 (byte 0x{data[e.start]:02x} at offset "
                         f"{e.start}): {path}; re-save it as UTF-8") from None
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise ValueError(f"no transcription target (empty file): {path}")
    return text


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


# --- samples ------------------------------------------------------------------------------------

def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _page_sample(sample_id: str, ref: str, prompt: str, target: str, source: str, index: int,
                 meta: dict) -> Sample:
    """One page image + instruction -> transcription."""
    messages = [{"role": "user", "content": [{"type": "image"}, _text(prompt)]},
                {"role": "assistant", "content": [_text(target)]}]
    return Sample(id=sample_id, messages=messages, images=[ref], source=source, index=index,
                  meta=meta)


def _qa_sample(record: dict, refs: list[str], index: int, source: str, prompt: str | None,
               meta: dict) -> Sample:
    """Pages (in order) then the question; or the record's own conversation with page tags."""
    sample_id = str(record.get("id", index))
    if "conversations" in record or "messages" in record:
        turns = record.get("conversations")
        if turns is None:
            turns = _messages_as_turns(record["messages"])
        llava = {**record, **meta, "image": refs, "conversations": turns}
        llava.pop("messages", None)
        # The page refs are resolved (and confined) by the reader already.
        return llava_to_sample(llava, index, Path("."), source, confine=False)
    question, answer, answers = record.get("question"), record.get("answer"), record.get("answers")
    if answer is None and isinstance(answers, list) and answers:
        answer = answers[0]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("no 'question' (or 'conversations' / 'messages') in the record")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
        raise ValueError("no 'answer' to learn from")
    text = f"{prompt}\n{question}" if prompt else question
    messages = [{"role": "user", "content": [{"type": "image"} for _ in refs] + [_text(text)]},
                {"role": "assistant", "content": [_text(str(answer))]}]
    extra = {k: v for k, v in record.items() if k not in ("question", "answer")}
    return Sample(id=sample_id, messages=messages, images=refs, source=source, index=index,
                  meta={**extra, **meta})


def _messages_as_turns(messages) -> list[dict]:
    """OpenAI-style messages whose images are ``<image>`` tags or bare ``{"type": "image"}``
    parts (the pages come from the record) as LLaVA turns."""
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is not an object")
        content = message.get("content")
        if isinstance(content, list):
            pieces = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif kind == "image":
                    pieces.append("<image>")
                else:
                    raise ValueError(f"unreadable content part {json.dumps(part)[:80]} (message {i}); "
                                     f"pages are {{\"type\": \"image\"}} parts or <image> tags")
            content = "".join(pieces)
        if not isinstance(content, str):
            raise ValueError(f"content must be a string or a list of parts (message {i})")
        turns.append({"from": message.get("role"), "value": content})
    return turns


# --- format: pdf --------------------------------------------------------------------------------

def _task(cfg: SourceConfig, default: str) -> str:
    task = cfg.task or default
    if task not in TASK_PROMPTS:
        raise DataError(f"source {cfg.name} ({cfg.path}): unknown task {task!r} for format "
                        f"{cfg.format}; choose from {', '.join(TASK_PROMPTS)}")
    return task


def _config_pages(cfg: SourceConfig):
    if cfg.pages is None:
        return None
    try:
        return parse_pages(cfg.pages)
    except ValueError as e:
        raise DataError(f"source {cfg.name}: {e}") from None


def _pdf_target(pdf: Path, page: int, task: str) -> str:
    stem = pdf.with_suffix("")
    candidates = [p for suffix in SIDECAR_SUFFIXES[task]
                  for p in (Path(f"{stem}.p{page}{suffix}"), stem / f"page_{page:03d}{suffix}")]
    sidecar = _first_existing(candidates)
    if sidecar is not None:
        return read_sidecar(sidecar)
    expected = f"{candidates[0].name} or {stem.name}/{candidates[1].name}"
    if task not in TEXT_LAYER_TASKS:
        raise ValueError(f"no transcription target: no sidecar {expected} for page {page} of "
                         f"{pdf} (a PDF's text layer is not HTML)")
    text = pdfpages.page_text(str(pdf), page)
    if not text:
        raise ValueError(f"no transcription target: page {page} of {pdf} has no text layer "
                         f"and no sidecar {expected}")
    return text


def _transcribe_pdf_pages(pdf: Path, pages: list[int], doc_id: str, task: str,
                          cfg: SourceConfig, bad: BadSampleLog, samples: list, source: str,
                          next_index) -> None:
    """One sample per page; ``next_index()`` numbers them (a running count for PDF folders,
    the record's index for annotation files)."""
    prompt = cfg.prompt or TASK_PROMPTS[task]
    for page in pages:
        index, sample_id = next_index(), f"{doc_id}#p{page}"
        try:
            target = _pdf_target(pdf, page, task)
        except ValueError as e:
            bad.add(BadSample(source, index, sample_id, str(e)))
            continue
        samples.append(_page_sample(sample_id, pdfpages.page_ref(str(pdf), page, cfg.dpi), prompt,
                                    target, source, index,
                                    {"task": task, "pdf": str(pdf), "page": page}))


def read_pdf(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"{path}: not found (format pdf wants a PDF, a folder of PDFs or a "
                        f"JSON/JSONL annotation file)")
    ranges = _config_pages(cfg)
    if path.is_file() and path.suffix.lower() in ANNOTATION_SUFFIXES:
        return _read_pdf_annotations(path, _task(cfg, "qa"), ranges, cfg, bad)
    task = _task(cfg, "transcribe_markdown")
    if task == "qa":
        raise DataError(f"source {cfg.name}: task qa needs questions: point path at a JSON/JSONL "
                        f"annotation file ({{\"pdf\": ..., \"question\": ..., \"answer\": ...}})")
    if path.is_file():
        pdfs, top = [path], path.parent
    else:
        pdfs = sorted((p for p in path.rglob("*") if p.suffix.lower() == ".pdf" and p.is_file()
                       and not _hidden(p.relative_to(path))),
                      key=lambda p: natural_key(p.relative_to(path).as_posix()))
        top = path
        if not pdfs:
            raise DataError(f"{path}: no .pdf files in this folder")
    samples, counter = [], itertools.count()
    for pdf in pdfs:
        doc_id = pdf.relative_to(top).with_suffix("").as_posix()
        try:
            pages, out_of_range = select_pages(ranges, pdfpages.page_count(str(pdf)), str(pdf))
        except ValueError as e:
            bad.add(BadSample(str(pdf), next(counter), doc_id, str(e)))
            continue
        if out_of_range:
            bad.add(BadSample(str(pdf), next(counter), doc_id, out_of_range))
        _transcribe_pdf_pages(pdf, pages, doc_id, task, cfg, bad, samples, str(pdf),
                              counter.__next__)
    return samples


def _read_pdf_annotations(path: Path, task: str, ranges, cfg: SourceConfig,
                          bad: BadSampleLog) -> list[Sample]:
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    samples = []
    for index, record in enumerate(read_records(path)):
        sample_id = str(record.get("id", index)) if isinstance(record, dict) else None
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected an object, got {type(record).__name__}")
            name = record.get("pdf")
            if not isinstance(name, str) or not name:
                raise ValueError("no 'pdf' path in the record")
            pdf = Path(images_lib.resolve(name, str(root), confine=not cfg.allow_outside_root))
            record_ranges = parse_pages(record["pages"]) if "pages" in record else ranges
            pages, out_of_range = select_pages(record_ranges, pdfpages.page_count(str(pdf)),
                                               str(pdf))
            if out_of_range:
                raise ValueError(out_of_range)
            if task == "qa":
                refs = [pdfpages.page_ref(str(pdf), p, cfg.dpi) for p in pages]
                samples.append(_qa_sample(record, refs, index, str(path), cfg.prompt,
                                          {"task": task, "pdf": str(pdf), "pages": pages}))
            else:
                doc_id = str(record.get("id", pdf.stem))
                _transcribe_pdf_pages(pdf, pages, doc_id, task, cfg, bad, samples, str(path),
                                      lambda: index)
        except ValueError as e:
            bad.add(BadSample(str(path), index, sample_id, str(e)))
    return samples


# --- format: page_images ------------------------------------------------------------------------

def _hidden(relative: Path) -> bool:
    """Dot files and folders (``.DS_Store``, macOS ``._page_1.png`` forks) are not documents."""
    return any(part.startswith(".") for part in relative.parts)


def _is_page_image(p: Path) -> bool:
    return p.suffix.lower() in PAGE_IMAGE_SUFFIXES and not _hidden(Path(p.name)) and p.is_file()


def _document_folders(root: Path, task: str) -> list[Path]:
    """Sub-folders holding page images or transcriptions, natural order; the root itself when
    it holds page images."""
    sidecars = set(SIDECAR_SUFFIXES.get(task, ()))

    def is_document(folder: Path) -> bool:
        return any(_is_page_image(p) or p.suffix.lower() in sidecars for p in folder.iterdir())

    subfolders = sorted((p for p in root.iterdir() if p.is_dir() and not _hidden(Path(p.name))),
                        key=lambda p: natural_key(p.name))
    docs = [p for p in subfolders if is_document(p)]
    if any(_is_page_image(p) for p in root.iterdir()):
        docs.insert(0, root)
    return docs


def _page_images(doc: Path) -> list[Path]:
    return sorted((p for p in doc.iterdir() if _is_page_image(p)), key=lambda p: natural_key(p.name))


def _check_page_image(path: Path) -> None:
    problem = images_lib.check(str(path))
    if problem:
        raise ValueError(f"{problem}: {path}")


def read_page_images(cfg: SourceConfig, bad: BadSampleLog) -> list[Sample]:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"{root}: format page_images wants a folder of documents (sub-folders of "
                        f"page images)")
    task = _task(cfg, "transcribe_markdown")
    ranges = _config_pages(cfg)
    docs = _document_folders(root, task)
    if task == "qa":
        return _page_images_qa(root, docs, ranges, cfg, bad)
    if not docs:
        raise DataError(f"{root}: no document folders with page images")
    samples, counter = [], itertools.count()
    prompt = cfg.prompt or TASK_PROMPTS[task]
    for doc in docs:
        doc_id = doc.relative_to(root).as_posix() if doc != root else root.name
        images = _page_images(doc)
        # A transcription whose image is missing: the page cannot be shown, so it is reported.
        stems = {p.stem for p in images}
        for orphan in sorted((p for p in doc.iterdir() if p.is_file() and not _hidden(Path(p.name))
                              and p.suffix.lower() in SIDECAR_SUFFIXES[task] and p.stem not in stems),
                             key=lambda p: natural_key(p.name)):
            bad.add(BadSample(str(orphan), next(counter), f"{doc_id}/{orphan.stem}",
                              f"missing page image: no {orphan.stem}.png (or .jpg, ...) next to "
                              f"{orphan}"))
        pages, out_of_range = select_pages(ranges, len(images), str(doc))
        if out_of_range:
            bad.add(BadSample(str(doc), next(counter), doc_id, out_of_range))
        for page in pages:
            image = images[page - 1]
            index, sample_id = next(counter), f"{doc_id}/{image.stem}"
            try:
                _check_page_image(image)
                sidecar = _first_existing([image.with_suffix(s) for s in SIDECAR_SUFFIXES[task]])
                if sidecar is None:
                    raise ValueError(f"no transcription target: no {image.stem}"
                                     f"{SIDECAR_SUFFIXES[task][0]} next to {image}")
                target = read_sidecar(sidecar)
            except ValueError as e:
                bad.add(BadSample(str(image), index, sample_id, str(e)))
                continue
            samples.append(_page_sample(sample_id, str(image), prompt, target, str(image), index,
                                        {"task": task, "doc": str(doc), "page": page}))
    return samples


def _page_images_qa(root: Path, docs: list[Path], ranges, cfg: SourceConfig,
                    bad: BadSampleLog) -> list[Sample]:
    files = [(f, None) for f in [root / QA_FILE] if f.is_file()]
    files += [(doc / QA_FILE, doc) for doc in docs if doc != root and (doc / QA_FILE).is_file()]
    if not files:
        raise DataError(f"{root}: task qa needs questions in {QA_FILE} (in each document folder, "
                        f"or in the top folder with a 'doc' key per record)")
    samples = []
    for qa_file, doc in files:
        for index, record in enumerate(read_records(qa_file)):
            sample_id = str(record.get("id", index)) if isinstance(record, dict) else None
            try:
                if not isinstance(record, dict):
                    raise ValueError(f"expected an object, got {type(record).__name__}")
                folder = doc or _record_document(root, record, root in docs)
                pages, images = _record_page_images(folder, record, ranges,
                                                    not cfg.allow_outside_root)
                samples.append(_qa_sample(record, [str(p) for p in images], index, str(qa_file),
                                          cfg.prompt, {"task": "qa", "doc": str(folder),
                                                       "pages": pages}))
            except ValueError as e:
                bad.add(BadSample(str(qa_file), index, sample_id, str(e)))
    return samples


def _record_document(root: Path, record: dict, root_is_document: bool) -> Path:
    name = record.get("doc")
    if name is None and root_is_document:  # the top folder holds the pages itself
        return root
    if not isinstance(name, str) or not name:
        raise ValueError(f"no 'doc' (the document's sub-folder) in a record of the top {QA_FILE}")
    folder = root / name
    if not folder.is_dir():
        raise ValueError(f"document folder not found: {folder}")
    return folder


def _record_page_images(folder: Path, record: dict, ranges,
                        confine: bool = True) -> tuple[list[int], list[Path]]:
    """The record's pages: by file name (``images``) or number (``pages``; default: the
    source's ``pages``, else all)."""
    images = _page_images(folder)
    if "images" in record:
        names = record["images"]
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError("'images' must be a file name or a list of file names")
        chosen = [Path(images_lib.resolve(n, str(folder), confine=confine)) for n in names]
        for p in chosen:
            if not p.is_file():
                raise ValueError(f"page image not found: {p}")
            _check_page_image(p)
        numbers = {p.name: i for i, p in enumerate(images, 1)}
        return [numbers.get(p.name, 0) for p in chosen], chosen
    if not images:
        raise ValueError(f"no page images in {folder}")
    record_ranges = parse_pages(record["pages"]) if "pages" in record else ranges
    pages, out_of_range = select_pages(record_ranges, len(images), str(folder))
    if out_of_range:
        raise ValueError(out_of_range)
    for page in pages:
        _check_page_image(images[page - 1])
    return pages, [images[p - 1] for p in pages]
