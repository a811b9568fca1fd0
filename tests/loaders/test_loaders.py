"""Loaders: discovery, per-format extraction and failure reasons, on generated and real files."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmrag.errors import LoadError
from mmrag.loaders import (
    SUPPORTED_SUFFIXES,
    DiscoveryProblem,
    FileRef,
    JsonlFields,
    LoaderLimits,
    discover,
    file_sha256,
    load,
)
from mmrag.types import Document

INGEST_DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ingest_docs"
DOC_TYPES = {"txt", "markdown", "html", "pdf", "docx", "pptx", "image", "jsonl"}


# --- helpers ----------------------------------------------------------------------------------


def load_path(path: Path, **kwargs: object) -> list[Document]:
    return load(FileRef.from_path(path), content_hash=file_sha256(path), **kwargs)  # type: ignore[arg-type]


def load_error(path: Path, **kwargs: object) -> LoadError:
    with pytest.raises(LoadError) as info:
        load_path(path, **kwargs)
    assert info.value.path == str(path)
    return info.value


def image_bytes(size: tuple[int, int] = (40, 30), fmt: str = "PNG", color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(size: tuple[int, int] = (200, 200)) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of the given size: a few KB on disk, ``width * height`` pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def build_pdf(pages: list[tuple[str | None, list[bytes]]]) -> bytes:
    """A minimal, valid PDF: per page an optional Helvetica text line and JPEG image XObjects."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(header: str, data: bytes) -> bytes:
        return f"<< {header} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream"

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    pages_id = add(b"")  # filled in once the kids are known
    kids = []
    for text, jpegs in pages:
        xobjects, content = [], b""
        for i, jpeg in enumerate(jpegs):
            width, height = Image.open(io.BytesIO(jpeg)).size
            header = (f"/Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceRGB "
                      "/BitsPerComponent 8 /Filter /DCTDecode")
            xobjects.append(f"/Im{i} {add(stream(header, jpeg))} 0 R")
            content += f"q {width} 0 0 {height} 72 {100 + 150 * i} cm /Im{i} Do Q\n".encode()
        if text is not None:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            content += f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET\n".encode("latin-1")
        contents = add(stream("", content))
        resources = f"<< /Font << /F1 {font} 0 R >> /XObject << {' '.join(xobjects)} >> >>"
        kids.append(add(f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 792] /Resources {resources} "
                        f"/Contents {contents} 0 R >>".encode()))
    refs = " ".join(f"{k} 0 R" for k in kids)
    objects[pages_id - 1] = f"<< /Type /Pages /Kids [{refs}] /Count {len(kids)} >>".encode()
    catalog = add(f"<< /Type /Catalog /Pages {pages_id} 0 R >>".encode())
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypted_pdf(user_password: str, owner_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(build_pdf([("Secret text", [])]))))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def assert_well_formed(doc: Document) -> None:
    assert doc.doc_type in DOC_TYPES
    assert doc.texts or doc.images
    assert all(block.text.strip() and "\r" not in block.text for block in doc.texts)
    assert all(isinstance(v, (str, int, float, bool)) for v in doc.metadata.values())
    for i, image in enumerate(doc.images):
        assert (image.data is None) != (image.path is None)
        assert image.index == i


# --- discovery --------------------------------------------------------------------------------


def test_discover_walks_sorted_with_relative_ids_and_reports_unsupported(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    for name in ["b.txt", "a/c.md", "a/Z.PDF", "a/sub/d.jsonl", ".hidden/x.txt", ".dot.txt", "photo.heic", "README"]:
        write(root / name, "x")

    found = list(discover([root]))

    refs = [f for f in found if isinstance(f, FileRef)]
    assert [r.doc_id for r in refs] == ["a/Z.PDF", "a/c.md", "a/sub/d.jsonl", "b.txt"]
    assert refs[0].suffix == ".pdf" and refs[0].root == root and refs[0].path == root / "a" / "Z.PDF"
    problems = {Path(p.path).name: p.reason for p in found if isinstance(p, DiscoveryProblem)}
    assert set(problems) == {"photo.heic", "README"}
    assert problems["photo.heic"].startswith("unsupported file type '.heic'; supported: ")
    assert ".pdf" in problems["photo.heic"]
    assert "no extension" in problems["README"]


def test_discover_single_file_uses_its_name_and_missing_paths_are_problems(tmp_path: Path) -> None:
    target = write(tmp_path / "deep" / "notes.txt", "hello")

    found = list(discover([target, tmp_path / "nope"]))

    assert found[0] == FileRef(path=target, root=target.parent, doc_id="notes.txt", suffix=".txt")
    assert isinstance(found[1], DiscoveryProblem) and "no such file" in found[1].reason


def test_discover_survives_symlink_loops_and_broken_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "sub" / "a.txt", "a")
    real = write(tmp_path / "outside.md", "# outside")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # loop to an ancestor
    (root / "self").symlink_to(root / "self")  # a -> a
    (root / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    (root / "link.md").symlink_to(real)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)  # second route, no loop

    found = list(discover([root]))

    assert [f.doc_id for f in found if isinstance(f, FileRef)] == ["link.md", "sub/a.txt"]
    reasons = {Path(p.path).name: p.reason for p in found if isinstance(p, DiscoveryProblem)}
    assert reasons.keys() == {"up", "self", "dangling.txt"}
    assert reasons["up"].startswith("symlink loop") and reasons["self"].startswith("symlink loop")
    assert reasons["dangling.txt"].startswith("broken symlink")
    link = next(f for f in found if isinstance(f, FileRef) and f.doc_id == "link.md")
    assert load(link, content_hash="h")[0].texts[0].text == "# outside"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_discover_reports_a_fifo_instead_of_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")

    [problem] = discover([tmp_path])

    assert isinstance(problem, DiscoveryProblem) and "not a regular file" in problem.reason


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read anything")
def test_discover_reports_unreadable_directories_and_files(tmp_path: Path) -> None:
    write(tmp_path / "locked" / "a.txt", "a")
    secret = write(tmp_path / "secret.txt", "s")
    (tmp_path / "locked").chmod(0)
    secret.chmod(0)
    try:
        found = list(discover([tmp_path]))
    finally:
        (tmp_path / "locked").chmod(0o755)
    reasons = sorted(p.reason for p in found if isinstance(p, DiscoveryProblem))
    assert len(reasons) == 2 and all("permission denied" in r for r in reasons)


def test_discover_refuses_colliding_ids_and_yields_a_file_once(tmp_path: Path) -> None:
    first = write(tmp_path / "one" / "x.txt", "1")
    write(tmp_path / "two" / "x.txt", "2")

    found = list(discover([tmp_path / "one", tmp_path / "two", first]))

    assert [f.path for f in found if isinstance(f, FileRef)] == [first]
    [problem] = [f for f in found if isinstance(f, DiscoveryProblem)]
    assert "doc id 'x.txt' is already used" in problem.reason


def test_file_sha256_streams_the_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = write(tmp_path / "blob.bin", data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(LoadError):
        file_sha256(tmp_path / "missing")


# --- text and markdown -----------------------------------------------------------------------

GERMAN = "Grüße aus Köln.\r\nÄrger über Öl, süß und schön.\rEnde\r\n"
EXPECTED_GERMAN = "Grüße aus Köln.\nÄrger über Öl, süß und schön.\nEnde\n"


@pytest.mark.parametrize(
    ("encoded", "encoding"),
    [
        (GERMAN.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + GERMAN.encode("utf-8"), "utf-8"),
        (GERMAN.encode("utf-16"), "utf-16-le"),  # Python writes a little-endian BOM
        (codecs.BOM_UTF16_BE + GERMAN.encode("utf-16-be"), "utf-16-be"),
        (GERMAN.encode("utf-32"), "utf-32-le"),
        (codecs.BOM_UTF32_BE + GERMAN.encode("utf-32-be"), "utf-32-be"),
        (GERMAN.encode("utf-16-le"), "utf-16-le"),  # no BOM
        ((GERMAN * 4).encode("latin-1"), None),
    ],
)
def test_text_encodings_are_detected_and_newlines_normalised(
    tmp_path: Path, encoded: bytes, encoding: str | None
) -> None:
    [doc] = load_path(write(tmp_path / "a.txt", encoded))

    expected = EXPECTED_GERMAN * 4 if encoding is None else EXPECTED_GERMAN
    assert doc.texts[0].text == expected
    assert doc.doc_type == "txt" and doc.doc_id == "a.txt" and doc.texts[0].page is None
    if encoding is not None:
        assert doc.metadata["encoding"] == encoding


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n", "\n \n".encode("utf-16")])
def test_empty_and_whitespace_text_is_skipped(tmp_path: Path, content: bytes) -> None:
    error = load_error(write(tmp_path / "empty.txt", content))
    assert error.skipped and error.reason == "empty file: no text to index"


def test_binary_data_in_a_text_file_fails(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "x.md", b"\x00\x01\x02binary\x00\xff\xfe\x00" * 40))
    assert not error.skipped and "binary" in error.reason


def test_markdown_keeps_syntax_and_takes_the_first_h1_as_title(tmp_path: Path) -> None:
    text = "```\n# not a title\n```\n\n# Real Title\n\n* item\n"
    [doc] = load_path(write(tmp_path / "n.markdown", text))
    # One block per heading section, which together are the file's text, unchanged.
    assert doc.doc_type == "markdown" and "".join(b.text for b in doc.texts) == text
    assert doc.texts[-1].metadata["section"] == "Real Title" and "section" not in doc.texts[0].metadata
    assert doc.metadata["title"] == "Real Title"


def test_limits_give_actionable_reasons(tmp_path: Path) -> None:
    path = write(tmp_path / "big.txt", "word " * 1000)
    big = write(tmp_path / "big2.txt", b"x" * (3 * 1024 * 1024))
    assert load_error(big, limits=LoaderLimits(max_file_bytes=2 * 1024 * 1024)).reason == (
        "file is 3 MB, over the 2 MB limit (--max-file-mb)"
    )
    too_long = load_error(path, limits=LoaderLimits(max_text_chars=100))
    assert "5,000 characters, over the 100 character limit" in too_long.reason


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\ufeff"), max_size=200),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
)
def test_text_round_trips_through_any_unicode_encoding(
    tmp_path_factory: pytest.TempPathFactory, text: str, encoding: str
) -> None:
    path = write(tmp_path_factory.mktemp("rt") / "t.txt", text.encode(encoding))
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    if not expected.strip():
        assert load_error(path).skipped
    else:
        assert load_path(path)[0].texts[0].text == expected


# --- HTML --------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>My  Page</title><style>.x {{ color: red }}</style><script>var leaked = 1;</script></head>
<body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Heading</h1><p>First   paragraph
with <b>bold</b> words.</p>
<table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></table>
<div hidden>secret</div><ul><li>one</li><li>two</li></ul>
<pre>code  line1
  line2</pre><p>Line<br>break {extra}</p>
<img src="data:image/png;base64,{png}" alt="red"><img src="data:image/svg+xml;base64,PHN2Zy8+">
<img src="data:image/png;base64,{tiny}"><img src="https://example.com/remote.png"><img src="data:image/png;base64,@@@">
</body></html>"""


def html_page(extra: str = "") -> str:
    png = codecs.encode(image_bytes(), "base64").decode().replace("\n", "")
    tiny = codecs.encode(image_bytes((4, 4)), "base64").decode().replace("\n", "")
    return PAGE.format(png=png, tiny=tiny, extra=extra)


def test_html_text_structure_title_and_data_uri_images(tmp_path: Path) -> None:
    [doc] = load_path(write(tmp_path / "p.html", html_page()))

    before, table, after = doc.texts  # the table is a block of its own, between the text around it
    assert before.text == "Heading\n\nFirst paragraph with bold words."
    assert table.text == "| A | B |\n|---|---|\n| 1 | 2 |" and table.metadata["content"] == "table"
    assert after.text.startswith("one\ntwo\n\n")
    assert {b.metadata["section"] for b in doc.texts} == {"Heading"}
    text = "\n\n".join(b.text for b in doc.texts)
    assert "code  line1\n  line2" in text and "Line\nbreak" in text
    for noise in ("leaked", "color", "Home", "About", "secret", "My Page"):
        assert noise not in text
    assert doc.metadata["title"] == "My Page" and doc.doc_type == "html"
    [image] = doc.images  # the SVG, the 4x4 pixel, the remote and the broken ones are skipped
    assert image.data == image_bytes() and image.name == "image0.png" and image.page is None
    assert doc.metadata["images_skipped"] == 3


def test_html_decoding_honours_bom_and_meta_charset(tmp_path: Path) -> None:
    utf16 = write(tmp_path / "u16.htm", html_page("Grüße").encode("utf-16"))
    assert "break Grüße" in load_path(utf16)[0].texts[-1].text

    cp1252 = '<html><head><meta charset="iso-8859-1"></head><body><p>caf\u00e9 \u20ac5</p></body></html>'
    assert load_path(write(tmp_path / "l1.html", cp1252.encode("cp1252")))[0].texts[0].text == "café €5"

    lying = '<?xml version="1.0"?><html><head><meta charset="utf-16"></head><body>plain ascii</body></html>'
    assert load_path(write(tmp_path / "l2.html", lying.encode("ascii")))[0].texts[0].text == "plain ascii"

    # The other two ways to declare a charset (bs4's EncodingDetector reads all three).
    equiv = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=koi8-r"></head><body>Ёж да</body></html>'
    assert load_path(write(tmp_path / "k.html", equiv.encode("koi8-r")))[0].texts[0].text == "Ёж да"
    xhtml = '<?xml version="1.0" encoding="iso-8859-7"?><html><body><p>Καλή</p></body></html>'
    assert load_path(write(tmp_path / "g.html", xhtml.encode("iso-8859-7")))[0].texts[0].text == "Καλή"


def test_html_without_text_or_images_is_skipped(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "e.html", "<html><head><script>x()</script></head><body> </body></html>"))
    assert error.skipped


def test_deeply_nested_html_does_not_crash(tmp_path: Path) -> None:
    [doc] = load_path(write(tmp_path / "deep.html", "<div>" * 20_000 + "deep text" + "</div>" * 20_000))
    assert doc.texts[0].text == "deep text"


# --- PDF ---------------------------------------------------------------------------------------


def test_pdf_text_per_page_and_images(tmp_path: Path) -> None:
    photo, tiny = image_bytes((64, 48), "JPEG"), image_bytes((8, 8), "JPEG", "blue")
    data = build_pdf([("Hello page one", [photo, tiny]), (None, []), ("Page (three)", [photo])])

    [doc] = load_path(write(tmp_path / "x.pdf", data))

    assert [(b.page, b.text) for b in doc.texts] == [(1, "Hello page one"), (3, "Page (three)")]
    assert [(image.page, image.index) for image in doc.images] == [(1, 0), (3, 1)]  # the 8x8 is skipped
    assert Image.open(io.BytesIO(doc.images[0].read_bytes())).size == (64, 48)
    assert doc.metadata["n_pages"] == 3 and doc.metadata["text_layer"] is True
    assert doc.metadata["images_skipped"] == 1


def test_pdf_shared_images_are_kept_once(tmp_path: Path) -> None:
    photo = image_bytes((64, 48), "JPEG")
    [doc] = load_path(write(tmp_path / "x.pdf", build_pdf([("a", [photo]), ("b", [photo])])))
    assert [image.page for image in doc.images] == [1, 2]  # distinct objects with the same bytes

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(build_pdf([("a", [photo])]))))
    writer.add_page(writer.pages[0])  # the very same page object (and image XObject) twice
    buf = io.BytesIO()
    writer.write(buf)
    [doc] = load_path(write(tmp_path / "y.pdf", buf.getvalue()))
    assert len(doc.texts) == 2 and [image.page for image in doc.images] == [1]


def test_pdf_without_text_keeps_its_images(tmp_path: Path) -> None:
    [doc] = load_path(write(tmp_path / "scan.pdf", build_pdf([(None, [image_bytes((100, 140), "JPEG")])])))
    assert doc.texts == () and len(doc.images) == 1 and doc.metadata["text_layer"] is False


def test_pdf_without_text_or_images_is_skipped(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "blank.pdf", build_pdf([(None, []), ("   ", [])])))
    assert error.skipped and error.reason == "no text layer and no images (scanned PDF? run OCR first)"


def test_pdf_with_user_password_fails_and_owner_password_only_loads(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "locked.pdf", encrypted_pdf("secret", "owner")))
    assert error.reason == "encrypted PDF: a password is required; decrypt it first (e.g. qpdf --decrypt)"

    [doc] = load_path(write(tmp_path / "protected.pdf", encrypted_pdf("", "owner")))
    assert doc.texts[0].text == "Secret text" and doc.metadata["encrypted"] is True


@pytest.mark.parametrize(
    "data",
    [b"", b"%PDF-1.7\nnot really", b"just some bytes", build_pdf([("cut short", [])])[:300]],
    ids=["empty", "header-only", "no-header", "truncated"],
)
def test_broken_pdfs_become_load_errors(tmp_path: Path, data: bytes) -> None:
    error = load_error(write(tmp_path / "bad.pdf", data))
    assert error.reason


# --- DOCX and PPTX ----------------------------------------------------------------------------


def make_docx(path: Path) -> Path:
    import docx
    from docx.shared import Inches

    document = docx.Document()
    document.core_properties.title = "Quarterly"
    document.add_heading("Intro", level=1)
    document.add_paragraph("First paragraph.")
    table = document.add_table(rows=2, cols=3)
    for cell, value in zip(table.rows[0].cells, ["h1", "h2", "h3"]):
        cell.text = value
    merged = table.cell(1, 0).merge(table.cell(1, 1))
    merged.text = "wide"
    table.cell(1, 2).text = "right"
    document.add_picture(io.BytesIO(image_bytes((40, 40), "PNG", "green")), width=Inches(1))
    document.add_picture(io.BytesIO(image_bytes((4, 4), "PNG", "blue")), width=Inches(0.1))
    document.add_paragraph("After the table.")
    document.save(str(path))
    return path


def test_docx_paragraphs_tables_and_images_in_order(tmp_path: Path) -> None:
    [doc] = load_path(make_docx(tmp_path / "report.docx"))

    intro, table, after = doc.texts  # a section per heading, the table a Markdown block of its own
    assert intro.text == "Intro\n\nFirst paragraph." and intro.metadata == {"section": "Intro"}
    # The merged cell spans two grid columns: its text once, the grid kept so columns line up.
    assert table.text == "| h1 | h2 | h3 |\n|---|---|---|\n| wide |  | right |"
    assert table.metadata == {"section": "Intro", "content": "table", "table_rows": 1}
    assert after.text == "After the table." and after.metadata == {"section": "Intro"}
    [image] = doc.images
    assert image.data == image_bytes((40, 40), "PNG", "green") and image.name == "image1.png"
    assert doc.metadata == {"title": "Quarterly", "images_skipped": 1}


def make_pptx(path: Path) -> Path:
    import pptx
    from pptx.util import Inches

    deck = pptx.Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    first.shapes.title.text = "Slide one"
    table = first.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for (row, col), value in {(0, 0): "k", (0, 1): "v", (1, 0): "a", (1, 1): "1"}.items():
        table.cell(row, col).text = value
    first.notes_slide.notes_text_frame.text = "Speaker notes"
    second = deck.slides.add_slide(deck.slide_layouts[6])  # blank
    second.shapes.add_picture(io.BytesIO(image_bytes((50, 50), "PNG", "navy")), Inches(1), Inches(1))
    group = second.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(1), Inches(4), Inches(3), Inches(1)).text_frame.text = "grouped text"
    deck.slides.add_slide(deck.slide_layouts[6])  # empty slide: no block
    third = deck.slides.add_slide(deck.slide_layouts[6])
    third.shapes.add_picture(io.BytesIO(image_bytes((50, 50), "PNG", "navy")), Inches(1), Inches(1))
    deck.save(str(path))
    return path


def test_pptx_one_block_per_slide_with_tables_notes_and_pictures(tmp_path: Path) -> None:
    [doc] = load_path(make_pptx(tmp_path / "deck.pptx"))

    assert [(b.page, b.text) for b in doc.texts] == [
        (1, "Slide one\n\nk | v\n\na | 1\n\nSpeaker notes"),
        (2, "grouped text"),
    ]
    [image] = doc.images  # the picture reused on slide 4 is kept once
    assert image.page == 2 and image.data == image_bytes((50, 50), "PNG", "navy")
    assert doc.metadata["n_slides"] == 4


@pytest.mark.parametrize("suffix", [".docx", ".pptx"])
def test_broken_office_files_become_load_errors(tmp_path: Path, suffix: str) -> None:
    assert "not a ZIP archive" in load_error(write(tmp_path / f"a{suffix}", b"PK not really a zip")).reason
    good = make_docx(tmp_path / "g.docx") if suffix == ".docx" else make_pptx(tmp_path / "g.pptx")
    assert load_error(write(tmp_path / f"cut{suffix}", good.read_bytes()[:2000])).reason
    import zipfile

    with zipfile.ZipFile(tmp_path / f"empty{suffix}", "w") as archive:
        archive.writestr("hello.txt", "not an office file")
    assert load_error(tmp_path / f"empty{suffix}").reason


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_images_load_as_a_path_asset(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path / f"pic.{fmt.lower()}", image_bytes((33, 21), fmt))
    [doc] = load_path(path)
    assert doc.doc_type == "image" and doc.texts == ()
    assert doc.images[0].path == str(path) and doc.images[0].data is None
    assert doc.metadata == {"width": 33, "height": 21, "format": fmt}


def test_truncated_and_corrupt_images_fail_with_reasons(tmp_path: Path) -> None:
    truncated = load_error(write(tmp_path / "t.png", noise_png()[:5000]))
    assert truncated.reason.startswith("truncated or corrupt image")
    garbage = load_error(write(tmp_path / "g.jpg", os.urandom(500)))
    assert garbage.reason.startswith("truncated or corrupt image")


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    bomb = write(tmp_path / "bomb.png", bomb_png(20_000, 20_000))
    assert bomb.stat().st_size < 100_000
    error = load_error(bomb)
    assert error.reason.startswith("image too large (400,000,000 pixels")
    assert error.reason.endswith("possible decompression bomb")

    small = write(tmp_path / "small.png", image_bytes((64, 64)))
    assert load_error(small, limits=LoaderLimits(max_image_pixels=1000)).reason == (
        "image too large (4,096 pixels > 1,000 limit) — possible decompression bomb"
    )


# --- JSONL -------------------------------------------------------------------------------------


def jsonl(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


def test_jsonl_one_document_per_record(tmp_path: Path) -> None:
    path = write(tmp_path / "corpus.jsonl", codecs.BOM_UTF8 + jsonl(
        {"_id": "d1", "title": "Title", "text": "Body text.", "year": 2020, "metadata": {"x": 1}},
        "",
        {"_id": 7, "text": "No title\r\nhere"},
        {"id": "fallback", "title": "Only a title"},
        {"_id": "blank", "title": "", "text": "   "},
    ).encode())

    docs = load_path(path)

    assert [(d.doc_id, d.texts[0].text) for d in docs] == [
        ("d1", "Title\n\nBody text."), ("7", "No title\nhere"), ("fallback", "Only a title")
    ]
    assert docs[0].metadata == {"title": "Title", "year": 2020, "line": 1}
    assert docs[1].metadata == {"line": 3}
    assert all(d.doc_type == "jsonl" and d.source == str(path) for d in docs)


def test_jsonl_record_hash_survives_moves_and_key_order(tmp_path: Path) -> None:
    a = load_path(write(tmp_path / "a.jsonl", jsonl({"_id": "x", "text": "same"}, {"_id": "y", "text": "one"})))
    b = load_path(write(tmp_path / "b.jsonl", jsonl({"_id": "y", "text": "two"}, '{"text": "same",  "_id": "x"}')))
    assert a[0].content_hash == b[1].content_hash
    assert a[1].content_hash != b[0].content_hash


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", jsonl({"pid": "p1", "heading": "H", "body": "B", "_id": "ignored"}))
    [doc] = load_path(path, jsonl=JsonlFields(id="pid", title="heading", text="body"))
    assert doc.doc_id == "p1" and doc.texts[0].text == "H\n\nB"
    assert "no 'pid' field" in load_error(write(tmp_path / "d.jsonl", jsonl({"id": "x", "text": "t"})),
                                           jsonl=JsonlFields(id="pid")).reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (jsonl({"_id": "a", "text": "x"}, "", '{"_id": "b", "text": '), "line 3: invalid JSON"),
        (jsonl({"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}), "line 2: duplicate id 'a' (first at line 1)"),
        (jsonl({"text": "no id"}), "line 1: record has no '_id' or 'id' field"),
        (jsonl({"_id": None, "text": "x"}), "line 1: id must be a string or an integer"),
        (jsonl({"_id": "a", "text": 5}), "line 1: field 'text' must be a string"),
        (jsonl([1, 2]), "line 1: expected a JSON object"),
        (b'{"_id": "a", "text": "\xff"}\n', "line 1: not valid UTF-8"),
    ],
)
def test_jsonl_bad_lines_fail_the_whole_file(tmp_path: Path, content: str | bytes, reason: str) -> None:
    error = load_error(write(tmp_path / "bad.jsonl", content))
    assert error.reason.startswith(reason) and not error.skipped


def test_jsonl_without_records_is_skipped(tmp_path: Path) -> None:
    assert load_error(write(tmp_path / "blank.jsonl", "\n\n  \n")).skipped
    assert load_error(write(tmp_path / "notext.jsonl", jsonl({"_id": "a", "text": ""}))).skipped


# --- every format: no parser exception escapes ------------------------------------------------


@pytest.mark.parametrize("suffix", sorted(SUPPORTED_SUFFIXES))
def test_garbage_in_any_format_is_a_load_error_or_a_document(tmp_path: Path, suffix: str) -> None:
    samples = [os.urandom(2048), b"\x89PNG\r\n\x1a\n" + os.urandom(100), b"PK\x03\x04" + os.urandom(64)]
    for n, data in enumerate(samples):
        path = write(tmp_path / f"g{n}{suffix}", data)
        try:
            docs = load_path(path)
        except LoadError as error:
            assert error.reason and error.path == str(path)
        else:
            assert all(d.doc_type in DOC_TYPES for d in docs)


def test_unsupported_suffix_and_missing_file(tmp_path: Path) -> None:
    assert "unsupported file type '.heic'" in load_error(write(tmp_path / "x.heic", b"x")).reason
    with pytest.raises(LoadError, match="cannot read file"):
        load(FileRef.from_path(tmp_path / "gone.txt"), content_hash="h")


# --- the shared corpus of real-world files -----------------------------------------------------

@pytest.fixture(scope="module")
def ingest_docs() -> tuple[dict[str, list[Document] | LoadError], dict[str, str]]:
    if not INGEST_DOCS.is_dir():
        pytest.skip(f"{INGEST_DOCS} not present (only CI and developers have ../shared)")
    outcomes: dict[str, list[Document] | LoadError] = {}
    problems: dict[str, str] = {}
    for item in discover([INGEST_DOCS]):
        if isinstance(item, DiscoveryProblem):
            problems[Path(item.path).relative_to(INGEST_DOCS).as_posix()] = item.reason
            continue
        try:
            # OCR is left to tests/loaders/test_ocr_docs.py (slow): this fixture checks the
            # text layers, tables, sections and images of every file in seconds.
            outcomes[item.doc_id] = load(item, content_hash=file_sha256(item.path), limits=LoaderLimits(ocr="never"))
        except LoadError as error:
            outcomes[item.doc_id] = error
    return outcomes, problems


def only(outcomes: dict[str, list[Document] | LoadError], name: str) -> Document:
    [key] = [k for k in outcomes if k.endswith("/" + name)]
    result = outcomes[key]
    assert not isinstance(result, LoadError), result.reason
    [doc] = result
    return doc


def failure(outcomes: dict[str, list[Document] | LoadError], name: str) -> LoadError:
    [key] = [k for k in outcomes if k.endswith("/" + name)]
    result = outcomes[key]
    assert isinstance(result, LoadError), f"{name} loaded"
    return result


@pytest.mark.shared
def test_ingest_docs_every_loaded_document_is_well_formed(ingest_docs) -> None:  # type: ignore[no-untyped-def]
    outcomes, problems = ingest_docs
    assert problems == {
        "MANIFEST.tsv": problems["MANIFEST.tsv"],
        "SHA256SUMS": problems["SHA256SUMS"],
        "unstructured/example-docs/img/DA-1p.heic": problems["unstructured/example-docs/img/DA-1p.heic"],
    }
    assert problems["unstructured/example-docs/img/DA-1p.heic"].startswith("unsupported file type '.heic'")
    for doc_id, result in outcomes.items():
        if isinstance(result, LoadError):
            continue
        for doc in result:
            assert doc.doc_id == doc_id and doc.source == str(INGEST_DOCS / doc_id)
            assert_well_formed(doc)
            for image in doc.images:  # every asset handed on must decode
                with Image.open(io.BytesIO(image.read_bytes())) as img:
                    img.load()


@pytest.mark.shared
def test_ingest_docs_pdfs(ingest_docs) -> None:  # type: ignore[no-untyped-def]
    outcomes, _ = ingest_docs
    react = only(outcomes, "react_paper.pdf")
    pages = [b for b in react.texts if b.metadata.get("content") != "table"]
    assert "ReAct" in pages[0].text and pages[0].page == 1 and len(pages) == 31
    assert len(only(outcomes, "embedded-images.pdf").images) >= 2
    empty_pages = only(outcomes, "layout-parser-paper-with-empty-pages.pdf")
    assert [b.page for b in empty_pages.texts] == [1, 4]
    for scanned in ["loremipsum-flat.pdf", "non_text_searchable.pdf", "file_scanned.pdf"]:
        doc = only(outcomes, scanned)
        # Under --ocr never a scan has no text; its page render stands in for the scan's image.
        assert doc.texts == () and len(doc.images) == 1 and doc.metadata["text_layer"] is False
        assert doc.images[0].name == "page-1.jpg" and doc.metadata["scanned_pages"] >= 1
    assert only(outcomes, "pdf-with-ocr-text.pdf").texts
    assert len(only(outcomes, "failure-after-repair.pdf").texts) > 50
    assert "encrypted" in failure(outcomes, "password.pdf").reason
    try:
        import cryptography  # noqa: F401  (pypdf needs it for AES, even with an empty password)
    except ImportError:
        assert "pip install 'pypdf[crypto]'" in failure(outcomes, "copy-protected.pdf").reason
    else:
        assert "LayoutParser" in only(outcomes, "copy-protected.pdf").texts[0].text


@pytest.mark.shared
def test_ingest_docs_office_files(ingest_docs) -> None:  # type: ignore[no-untyped-def]
    outcomes, _ = ingest_docs
    assert len(only(outcomes, "contains-pictures.docx").images) == 3
    tables = [b for b in only(outcomes, "docx-tables.docx").texts if b.metadata.get("content") == "table"]
    assert len(tables) == 3 and all(b.text.startswith("| ") and "\n|---|" in b.text for b in tables)
    picture = only(outcomes, "picture.pptx")
    assert len(picture.images) == 1 and picture.images[0].page == 1
    assert only(outcomes, "fake-power-point-malformed.pptx").texts
    assert [b.page for b in only(outcomes, "sample_pptx.pptx").texts] == [1, 2]


@pytest.mark.shared
def test_ingest_docs_text_and_html(ingest_docs) -> None:  # type: ignore[no-untyped-def]
    outcomes, _ = ingest_docs
    assert only(outcomes, "fake-text-utf-16.txt").texts[0].text.startswith("This is a test document")
    steel = only(outcomes, "example-steelJIS-datasheet-utf-16.html")
    assert "Chemical composition" in steel.texts[1].text and "SteelJIS" in str(steel.metadata["title"])
    assert steel.texts[1].metadata["section"].endswith("SNB22-3 Chemical composition, standards and properties")
    umlauts = only(outcomes, "umlauts-non-utf8.md").texts[0].text
    assert "können" in umlauts and "äöüß" in umlauts
    gatsby = only(outcomes, "file_unknown.txt").texts[0].text
    assert gatsby.startswith("The Project Gutenberg") and "\r" not in gatsby
    base64_page = only(outcomes, "fake-html-with-base64-image.html")
    assert len(base64_page.images) == 1 and base64_page.images[0].data
    assert "Superlinear" in str(only(outcomes, "paul_graham_superlinear.html").metadata["title"])
    for name in ["empty.txt", "fake-text-all-whitespace.txt"]:
        error = failure(outcomes, name)
        assert error.skipped and error.reason == "empty file: no text to index"


@pytest.mark.shared
def test_ingest_docs_images(ingest_docs) -> None:  # type: ignore[no-untyped-def]
    outcomes, _ = ingest_docs
    for name in ["apple.jpg", "example.jpg", "english-and-korean.png", "table-multi-row-column-cells.png"]:
        doc = only(outcomes, name)
        assert doc.images[0].path == doc.source
    for name in ["broken.png", "truncated_image.png", "truncated_jpeg.jpg"]:
        error = failure(outcomes, name)
        assert error.reason.startswith("truncated or corrupt image") and not error.skipped
