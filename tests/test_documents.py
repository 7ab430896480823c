"""Document corpora: PDFs rendered lazily at a dpi, page ranges, transcription targets, QA over
several pages, folders of page images, and bad documents reported by file and record."""

from __future__ import annotations

import pypdfium2
import pytest
from PIL import Image

from data.media import images as images_lib
from data.media import pdfpages
from data.config import SourceConfig
from data.sources.documents import parse_pages, select_pages
from data.encode import SampleEncoder, VisionBudget
from data.planner import TokenPlanner
from data.samples import BadSampleLog, DataError
from data.sources import load
from tests.helpers.files import write_jsonl

LETTER, A4 = (612, 792), (595.28, 841.89)


def make_pdf(path, pages, encrypted=False):
    """Write a PDF by hand. ``pages``: (width_pt, height_pt, text or None, rotate) each; text is
    drawn in Helvetica, so it is both visible and in the text layer."""
    bodies = [b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>", None]  # 1: font, 2: pages
    kids = []
    for width, height, text, rotate in pages:
        content = b""
        if text:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            content = f"BT /F1 12 Tf 10 {height / 2:.2f} Td ({escaped}) Tj ET".encode()
        bodies.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        bodies.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
                      f"/Rotate {rotate} /Resources << /Font << /F1 1 0 R >> >> "
                      f"/Contents {len(bodies)} 0 R >>".encode())
        kids.append(len(bodies))
    bodies[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>".encode()
    bodies.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    trailer = f"/Size {len(bodies) + 1} /Root {len(bodies)} 0 R"
    if encrypted:  # standard security handler whose user password is not empty
        bodies.append(b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32
                      + b"> /P -4 >>")
        trailer += f" /Encrypt {len(bodies)} 0 R /ID [<{'ab' * 16}> <{'ab' * 16}>]"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(bodies, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< %s >>\nstartxref\n%d\n%%%%EOF\n" % (trailer.encode(), xref)
    path.write_bytes(bytes(out))
    return path


def three_pages(path):
    return make_pdf(path, [(*LETTER, "Hello page one", 0), (*A4, "Second (page)", 90),
                           (200.5, 100.3, None, 0)])


def test_page_size_from_points_equals_rendered_image(tmp_path):
    pdf = three_pages(tmp_path / "a.pdf")
    expected = {  # (height, width) = ceil(points * dpi / 72); page 2 is rotated by 90 degrees
        (1, 100): (1100, 850), (2, 100): (827, 1170), (3, 100): (140, 279),
        (1, 150): (1651, 1275), (2, 37): (306, 433), (3, 299): (417, 833)}
    for (page, dpi), size in expected.items():
        ref = pdfpages.page_ref(str(pdf), page, dpi)
        assert ref == f"pdfpage://{pdf}#page={page}&dpi={dpi}"
        assert images_lib.image_size(ref) == size
        image = images_lib.load_image(ref)
        assert image.mode == "RGB" and (image.height, image.width) == size
        # pypdfium2's own render, without data.pdfpages' size guard, gives the same size
        raw = pypdfium2.PdfDocument(str(pdf))[page - 1].render(scale=dpi / 72).to_pil()
        assert (raw.height, raw.width) == size
    # The text is drawn: a page with text has dark pixels, the blank page has none.
    assert images_lib.load_image(pdfpages.page_ref(str(pdf), 1, 100)).convert("L").getextrema()[0] < 100
    assert images_lib.load_image(pdfpages.page_ref(str(pdf), 3, 100)).convert("L").getextrema() == (255, 255)
    assert images_lib.check(pdfpages.page_ref(str(pdf), 4, 100)) == \
        f"page 4 out of range: {pdf} has 3 pages"


def test_page_ranges():
    assert select_pages(parse_pages("1-3,7"), 10, "a.pdf") == ([1, 2, 3, 7], None)
    assert select_pages(parse_pages(" 5- "), 7, "a.pdf") == ([5, 6, 7], None)
    assert select_pages(parse_pages([3, 1]), 3, "a.pdf") == ([3, 1], None)
    assert select_pages(None, 2, "a.pdf") == ([1, 2], None)
    assert select_pages(parse_pages("2-5"), 3, "a.pdf") == \
        ([2, 3], "page 4 out of range: a.pdf has 3 pages (2 requested pages past the end)")
    assert select_pages(parse_pages("9-"), 3, "a.pdf") == ([], "page 9 out of range: a.pdf has 3 pages")
    for bad in ("0", "3-1", "1-x", "", [1.5], True):
        with pytest.raises(ValueError, match="pages"):
            parse_pages(bad)


def test_pdf_pages_are_read_lazily_with_text_layer_and_sidecar_targets(tmp_path, monkeypatch,
                                                                      processor):
    three_pages(tmp_path / "a.pdf")
    (tmp_path / "a.p1.md").write_text("# Page one\n")  # sidecar beats the text layer
    (tmp_path / "sub").mkdir()
    make_pdf(tmp_path / "sub" / "b.pdf", [(*LETTER, "bee", 0), (*LETTER, None, 0)])
    (tmp_path / "sub" / "b").mkdir()
    (tmp_path / "sub" / "b" / "page_002.md").write_text("*scanned*")

    def no_render(*args, **kwargs):
        raise AssertionError("a page was rendered while reading the source or planning")

    monkeypatch.setattr(pypdfium2.PdfPage, "render", no_render)
    log = BadSampleLog("skip")
    cfg = SourceConfig(path=str(tmp_path), format="pdf", dpi=72)
    samples = load(cfg, log)
    assert [s.id for s in samples] == ["a#p1", "a#p2", "sub/b#p1", "sub/b#p2"]
    assert [s.answer() for s in samples] == ["# Page one", "Second (page)", "bee", "*scanned*"]
    assert samples[0].messages[0]["content"][1]["text"] == "Transcribe this page to Markdown."
    (record,) = log.records
    assert (record.file, record.index, record.sample_id) == (str(tmp_path / "a.pdf"), 2, "a#p3")
    assert record.reason.startswith("no transcription target: page 3 of")
    assert images_lib.image_size(samples[1].images[0]) == (596, 842)  # rotated A4, not rendered
    planner = TokenPlanner(processor, VisionBudget(64 * 64, 256 * 256))
    assert all(planner.plan(s).visual_tokens > 0 for s in samples)

    # Page ranges and prompt override; transcribe_text does not read .md sidecars.
    samples = load(SourceConfig(path=str(tmp_path / "a.pdf"), format="pdf", task="transcribe_text",
                                pages="2,5", prompt="Read it."), log)
    assert [(s.id, s.answer()) for s in samples] == [("a#p2", "Second (page)")]
    assert samples[0].messages[0]["content"][1]["text"] == "Read it."
    assert log.records[-1].reason == f"page 5 out of range: {tmp_path / 'a.pdf'} has 3 pages"
    # HTML needs a sidecar: a text layer is not HTML.
    (tmp_path / "a.p2.html").write_text("<p>Second</p>")
    samples = load(SourceConfig(path=str(tmp_path / "a.pdf"), format="pdf", task="transcribe_html"), log)
    assert [(s.id, s.answer()) for s in samples] == [("a#p2", "<p>Second</p>")]
    assert "(a PDF's text layer is not HTML)" in log.records[-1].reason
    # An annotation file can list the pages to transcribe; bad pages name the record.
    listing = write_jsonl(tmp_path / "pages.jsonl", [{"id": "doc-a", "pdf": "a.pdf", "pages": "3-2"},
                                                     {"pdf": "a.pdf", "pages": "2-3"}])
    log = BadSampleLog("skip")
    samples = load(SourceConfig(path=str(listing), format="pdf", task="transcribe_text"), log)
    assert [(s.id, s.index, s.answer()) for s in samples] == [("a#p2", 1, "Second (page)")]
    assert [(r.file, r.index, r.sample_id) for r in log.records] == [
        (str(listing), 0, "doc-a"), (str(listing), 1, "a#p3")]
    assert "page numbers start at 1 and ranges go up" in log.records[0].reason
    with pytest.raises(DataError, match="unknown task 'summarise'"):
        load(SourceConfig(path=str(tmp_path), format="pdf", task="summarise"), log)
    with pytest.raises(DataError, match="pages '1-x'"):
        load(SourceConfig(path=str(tmp_path), format="pdf", pages="1-x"), log)


def test_multi_page_qa_sample_encodes_one_image_per_page(tmp_path, processor):
    three_pages(tmp_path / "a.pdf")
    records = [
        {"id": "q1", "pdf": "a.pdf", "pages": "1-2", "question": "What is on page two?",
         "answers": ["Second (page)", "second page"]},
        {"id": "q2", "pdf": "a.pdf", "pages": [3, 1], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhich page is blank?"},
            {"from": "gpt", "value": "the first"}]},
        {"id": "q3", "pdf": "a.pdf", "pages": [2], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rotated?"}]},
            {"role": "assistant", "content": "yes"}]},
    ]
    cfg = SourceConfig(path=str(write_jsonl(tmp_path / "qa.jsonl", records)), format="pdf", dpi=36,
                       prompt="Answer from the document.")
    q1, q2, q3 = load(cfg)
    assert q1.images == [pdfpages.page_ref(str(tmp_path / "a.pdf"), p, 36) for p in (1, 2)]
    assert [p["type"] for p in q1.messages[0]["content"]] == ["image", "image", "text"]
    assert q1.messages[0]["content"][2]["text"] == "Answer from the document.\nWhat is on page two?"
    assert q1.answer() == "Second (page)" and q1.meta["answers"] == records[0]["answers"]
    assert q2.images[0].endswith("#page=3&dpi=36") and q2.answer() == "the first"
    assert len(q3.images) == 1 and q3.answer() == "yes"

    budget = VisionBudget(64 * 64, 256 * 256)
    encoder, planner = SampleEncoder(processor, budget), TokenPlanner(processor, budget)
    vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    for sample in (q1, q2, q3):
        encoded = encoder.encode(sample)
        assert int((encoded["input_ids"] == vision_start).sum()) == len(sample.images)
        assert encoded["image_grid_thw"].shape[0] == len(sample.images)
        assert planner.plan(sample).total == len(encoded["input_ids"])
    labels = encoded["labels"][encoded["labels"] != -100]
    assert processor.tokenizer.decode(labels) == "yes<|im_end|>"


def test_bad_documents_are_reported_with_file_record_and_reason(tmp_path):
    three_pages(tmp_path / "a.pdf")
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.4\nnot really" * 8)
    make_pdf(tmp_path / "locked.pdf", [(*LETTER, "secret", 0)], encrypted=True)
    records = [{"pdf": "a.pdf", "pages": [1], "question": "q", "answer": "a"},
               {"id": "gone", "pdf": "missing.pdf", "question": "q", "answer": "a"},
               {"pdf": "empty.pdf", "question": "q", "answer": "a"},
               {"pdf": "corrupt.pdf", "question": "q", "answer": "a"},
               {"pdf": "locked.pdf", "question": "q", "answer": "a"},
               {"pdf": "a.pdf", "pages": "2-4", "question": "q", "answer": "a"},
               {"pdf": "a.pdf", "question": "q"},
               {"pdf": "a.pdf", "pages": [1, 2], "conversations": [
                   {"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]},
               ["not", "an", "object"]]
    path = write_jsonl(tmp_path / "qa.jsonl", records)
    log = BadSampleLog("skip")
    samples = load(SourceConfig(path=str(path), format="pdf"), log)
    assert [s.index for s in samples] == [0]
    assert all(r.file == str(path) for r in log.records)
    reasons = {r.index: r.reason for r in log.records}
    assert reasons == {
        1: f"PDF file not found: {tmp_path / 'missing.pdf'}",
        2: f"empty PDF file (0 bytes): {tmp_path / 'empty.pdf'}",
        3: f"unreadable PDF (not a PDF file, or corrupted): {tmp_path / 'corrupt.pdf'}",
        4: f"encrypted PDF needs a password: {tmp_path / 'locked.pdf'}; decrypt it "
           f"(e.g. qpdf --decrypt) or leave it out",
        5: f"page 4 out of range: {tmp_path / 'a.pdf'} has 3 pages",
        6: "no 'answer' to learn from",
        7: "1 <image> tags but 2 images",
        8: "expected an object, got list",
    }
    assert log.records[0].sample_id == "gone"
    assert log.counts()["encrypted PDF needs a password"] == 1
    with pytest.raises(DataError, match=rf"{path}: sample 1 \(id gone\): PDF file not found"):
        load(SourceConfig(path=str(path), format="pdf"))  # the default policy stops at once
    with pytest.raises(DataError, match="task qa needs questions"):
        load(SourceConfig(path=str(tmp_path / "a.pdf"), format="pdf", task="qa"))


def test_rendering_a_page_whose_file_went_away_is_an_os_error(tmp_path):
    ref = pdfpages.page_ref(str(three_pages(tmp_path / "a.pdf")), 1, 72)
    assert images_lib.image_size(ref) == (792, 612)
    (tmp_path / "a.pdf").unlink()
    with pytest.raises(OSError, match="PDF file not found"):  # what the trainer's skip catches
        images_lib.load_image(ref)


def test_a_huge_page_renders_within_the_pixel_bound_and_dpi_is_bounded(tmp_path):
    """A few hundred bytes of PDF can declare a 200-inch page: at 600 dpi that is 14 gigapixels.
    It is rendered at the scale that fits ``MAX_RENDER_PIXELS`` (the planner says the same
    size), and a reference asking a dpi past the sources' range is refused."""
    pdf = make_pdf(tmp_path / "poster.pdf", [(14400, 7200, None, 0)])
    assert pdf.stat().st_size < 1000
    ref = pdfpages.page_ref(str(pdf), 1, 600)
    height, width = images_lib.image_size(ref)
    assert height * width <= pdfpages.MAX_RENDER_PIXELS and abs(width / height - 2) < 0.01
    assert images_lib.load_image(ref).size == (width, height)
    for dpi in (10, 100_000):
        bad = f"pdfpage://{pdf}#page=1&dpi={dpi}"
        assert "dpi in [36, 600]" in images_lib.check(bad)


def page_png(path, size=(64, 96)):
    Image.new("RGB", size, "white").save(path)
    return path


def test_page_image_folders(tmp_path, processor):
    doc = tmp_path / "report"
    doc.mkdir()
    for n in (10, 2, 1):  # natural order: 1, 2, 10
        page_png(doc / f"page_{n}.png")
        (doc / f"page_{n}.md").write_text(f"page {n} text")
    (doc / "page_2.md").write_bytes(b"\xef\xbb\xbfwith BOM\r\nline 2")  # BOM and CRLF are fine
    (doc / "._page_1.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork: not a page
    other = tmp_path / "letter"
    other.mkdir()
    page_png(other / "p1.jpg")
    (other / "p1.md").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8: skipped
    page_png(other / "p2.png")  # no sidecar
    (other / "p3.md").write_text("text of a page whose image is missing")

    log = BadSampleLog("skip")
    samples = load(SourceConfig(path=str(tmp_path), format="page_images"), log)
    assert [s.id for s in samples] == ["report/page_1", "report/page_2", "report/page_10"]
    assert [s.answer() for s in samples] == ["page 1 text", "with BOM\nline 2", "page 10 text"]
    assert samples[0].images == [str(doc / "page_1.png")] and samples[2].meta["page"] == 3
    reasons = {r.sample_id: (r.file, r.reason) for r in log.records}
    assert reasons["letter/p3"] == (str(other / "p3.md"),
                                    f"missing page image: no p3.png (or .jpg, ...) next to {other / 'p3.md'}")
    assert reasons["letter/p1"][1] == (f"transcription is not UTF-8 (byte 0xe9 at offset 3): "
                                       f"{other / 'p1.md'}; re-save it as UTF-8")
    assert reasons["letter/p2"][1] == f"no transcription target: no p2.md next to {other / 'p2.png'}"
    assert len(log.records) == 3
    samples = load(SourceConfig(path=str(tmp_path), format="page_images", pages="3"), log)
    assert [s.id for s in samples] == ["report/page_10"]
    assert log.records[-1].reason == f"page 3 out of range: {other} has 2 pages"

    # Questions: per document (qa.jsonl in its folder) or top-level with "doc".
    write_jsonl(doc / "qa.jsonl", [
        {"id": "r1", "pages": "1-2", "question": "Title?", "answer": "Report"},
        {"id": "r2", "images": ["page_10.png", "nope.png"], "question": "q", "answer": "a"}])
    write_jsonl(tmp_path / "qa.jsonl", [{"doc": "letter", "images": "p2.png", "question": "Who?",
                                         "answer": "me"}, {"question": "q", "answer": "a"}])
    log = BadSampleLog("skip")
    letter_q, report_q = load(SourceConfig(path=str(tmp_path), format="page_images", task="qa"), log)
    assert report_q.images == [str(doc / "page_1.png"), str(doc / "page_2.png")]
    assert letter_q.images == [str(other / "p2.png")] and letter_q.answer() == "me"
    assert {(r.file, r.index): r.reason for r in log.records} == {
        (str(tmp_path / "qa.jsonl"), 1): "no 'doc' (the document's sub-folder) in a record of the top qa.jsonl",
        (str(doc / "qa.jsonl"), 1): f"page image not found: {doc / 'nope.png'}"}
    budget = VisionBudget(32 * 32 * 4, 128 * 128)
    encoded = SampleEncoder(processor, budget).encode(report_q)
    assert encoded["image_grid_thw"].shape[0] == 2
    assert TokenPlanner(processor, budget).plan(report_q).total == len(encoded["input_ids"])


def test_a_folder_of_page_images_is_one_document(tmp_path):
    for n in (1, 2):
        page_png(tmp_path / f"{n}.png")
    write_jsonl(tmp_path / "qa.jsonl", [{"id": "s", "pages": [2, 1], "question": "Order?",
                                         "answer": "two, one"}])
    (sample,) = load(SourceConfig(path=str(tmp_path), format="page_images", task="qa"))
    assert sample.images == [str(tmp_path / "2.png"), str(tmp_path / "1.png")]
    with pytest.raises(DataError, match=r"sample 0 \(id {}/1\): no transcription target".format(tmp_path.name)):
        load(SourceConfig(path=str(tmp_path), format="page_images", task="transcribe_text"))
