"""Issue 11 acceptance on real files from ../shared/data/ingest_docs: OCR accuracy, scans found by
their words, and questions about one table cell answered by the table's chunk at rank 1.

Ingests five files (two scans read by OCR) through the CLI with the offline profile: real Chroma,
real CLIP and text models, real RapidOCR. About a minute and a half on the 2-core machine.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.bench.ocr import edit_distance
from mmrag.cli import main
from mmrag.loaders import FileRef, LoaderLimits, load
from mmrag.loaders.ocr import read_text
from tests.conftest import shared

pytestmark = [pytest.mark.slow, pytest.mark.shared, pytest.mark.long]

DOCS = "unstructured/example-docs"
FILES = [f"{DOCS}/pdf/loremipsum-flat.pdf", f"{DOCS}/img/layout-parser-paper-fast.jpg", f"{DOCS}/docx-tables.docx",
         f"{DOCS}/example-10k-1p.html", f"{DOCS}/pdf/embedded-images-tables.pdf"]


def _normalise(text: str) -> str:
    # Ligatures (the text layer's "ﬁ"), and each whitespace run as one space: the spaces between
    # words count (keyword search needs them), the layout's line breaks and indents do not.
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def test_ocr_character_error_rate_on_the_layoutparser_page_image() -> None:
    from PIL import Image

    pdf = shared("ingest_docs", DOCS, "pdf", "layout-parser-paper-fast.pdf")
    [doc] = load(FileRef.from_path(pdf), content_hash="h", limits=LoaderLimits(ocr="never"))
    reference = _normalise(doc.texts[0].text)  # page 1's text layer: the page the JPEG shows
    with Image.open(shared("ingest_docs", DOCS, "img", "layout-parser-paper-fast.jpg")) as image:
        result = read_text(image)
    cer = edit_distance(_normalise(result.text), reference) / len(reference)
    print(f"CER {cer:.2%} over {len(reference)} characters, {result.seconds:.1f} s, confidence {result.confidence:.3f}")
    assert cer <= 0.05


def _mmrag(*args: str) -> object:
    result = CliRunner().invoke(main, [*args, "--profile", "offline", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _search(text: str, retriever: str, *extra: str) -> list[dict[str, object]]:
    hits = _mmrag("search", text, "--retriever", retriever, "--modality", "text", *extra)
    assert isinstance(hits, list)
    return hits


def _row(markdown: str, first_cell: str) -> tuple[list[str], list[str]]:
    """The header cells and the cells of the row whose first cell is ``first_cell``."""
    lines = markdown.split("\n")
    assert re.fullmatch(r"(\|---)+\|", lines[1]), markdown  # a Markdown table: header, rule, rows
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[0] == first_cell:
            return header, cells
    raise AssertionError(f"no row starting {first_cell!r} in\n{markdown}")


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = tmp_path_factory.mktemp("ocr_docs")
    for rel in FILES:
        target = corpus / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared("ingest_docs", rel), target)
    return corpus


def test_scans_and_tables_are_searchable(kb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_DATA_DIR", str(tmp_path / "data"))
    summary = _mmrag("ingest", str(kb))
    assert isinstance(summary, dict) and summary["failed"] == [] and summary["indexed"] == len(FILES)
    print("loaders:", summary["stats"])
    assert summary["stats"]["ocr_pages"] >= 1 and summary["stats"]["ocr_images"] >= 1
    assert summary["stats"]["ocr_seconds"] > 0

    # A scan with no text layer is found by its words, through the keyword index.
    # (A two-row DOCX table whose one cell reads "Lorem ipsum" may outrank it: BM25 favours
    # short chunks. The scan's chunk must hold all three words, which OCR keeps apart.)
    hits = _search("Lorem ipsum dolor", "bm25", "--k", "3")
    lorem = [h for h in hits if str(h["doc_id"]).endswith("pdf/loremipsum-flat.pdf")]
    print("lorem ipsum ranks:", [n for n, h in enumerate(hits, 1) if h in lorem])
    assert lorem and {"lorem", "ipsum", "dolor"} <= set(str(lorem[0]["text"]).lower().split())
    # The picture of the LayoutParser page is found by its OCR text (the PDF has the same words
    # in its text layer; the OCR-only filter shows the picture's own chunk matches).
    phrase = "a unified toolkit for deep learning based document image analysis"
    ocr_hits = _search(phrase, "bm25", "--meta", "text_source=ocr")
    assert ocr_hits and str(ocr_hits[0]["doc_id"]).endswith("img/layout-parser-paper-fast.jpg")
    assert any(str(h["doc_id"]).endswith("img/layout-parser-paper-fast.jpg") for h in _search(phrase, "bm25", "--k", "5"))

    # One question about one cell per file: the table's chunk is the top hit, and its Markdown
    # keeps the cell under its column, on its row.
    pdf_page = load(FileRef.from_path(kb / FILES[4]), content_hash="h", limits=LoaderLimits(ocr="never"))[0].texts[0]
    layer_row = next(line for line in pdf_page.text.split("\n") if line.startswith("8 "))
    cases = [
        ("docx-tables.docx", "What is in the Header Col 2 column next to Lorem ipsum?", "Lorem ipsum",
         "Header Col 2", "A link example"),
        ("example-10k-1p.html", "Which page of the 10-K has Item 1A Risk Factors?", "Item 1A.", "", "Risk Factors"),
        ("embedded-images-tables.pdf", "What is the corrosion rate at inhibitor concentration 8 g?", "8",
         "Corrosion rate(mm/year)", layer_row.split()[-1]),
    ]
    for name, question, row_key, column, value in cases:
        source = str(next(kb / f for f in FILES if f.endswith(name)))
        for retriever in ("bm25", "hybrid"):
            top = _search(question, retriever, "--source-prefix", source)[0]
            text = str(top["text"])
            assert text.startswith("| "), f"{name} {retriever}: top hit is not the table:\n{text}"
            header, cells = _row(text, row_key)
            if column:
                assert cells[header.index(column)] == value, (name, retriever, header, cells)
            else:
                assert value in cells, (name, retriever, cells)
