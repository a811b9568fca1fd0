"""OCR through the real RapidOCR engine on images and PDFs made here (a few seconds)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from mmrag.loaders import FileRef, LoaderLimits, load
from mmrag.loaders import pdf as pdf_loader
from mmrag.loaders.ocr import OcrError, RapidOcrEngine, reading_order, OcrLine

LINES = ["Invoice 4821 from Harbour Supplies", "Total due 317 euros by March"]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def text_page(lines: list[str], size: tuple[int, int] = (1240, 700)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((60, 60 + 70 * i), line, fill="black", font=_font(40))
    return image


def _load(path: Path, **limits: object):  # type: ignore[no-untyped-def]
    [doc] = load(FileRef.from_path(path), content_hash="h", limits=LoaderLimits(**limits))  # type: ignore[arg-type]
    return doc


def _words(text: str) -> set[str]:
    return set(text.lower().split())


def test_a_picture_of_text_gets_an_ocr_block(tmp_path: Path) -> None:
    text_page(LINES).save(tmp_path / "scan.png")
    doc = _load(tmp_path / "scan.png")
    [block] = doc.texts
    assert block.metadata["text_source"] == "ocr" and 0.8 < block.metadata["ocr_confidence"] <= 1
    # Reading order: the first line before the second.
    assert block.text.index("4821") < block.text.index("317")
    assert len(_words(block.text) & _words(" ".join(LINES))) >= 8
    assert doc.images[0].path == str(tmp_path / "scan.png")  # CLIP still sees the picture
    assert doc.stats["ocr_images"] == 1 and doc.stats["ocr_previews"] == 1 and doc.stats["ocr_seconds"] > 0


def test_a_picture_without_text_has_no_text_and_never_means_never(tmp_path: Path) -> None:
    photo = Image.radial_gradient("L").resize((400, 300)).convert("RGB")
    photo.save(tmp_path / "photo.jpg")
    doc = _load(tmp_path / "photo.jpg")
    # auto: the detector's preview found no text, so the picture was never read in full
    assert doc.texts == () and doc.stats.get("ocr_previews") == 1 and "ocr_images" not in doc.stats
    always = _load(tmp_path / "photo.jpg", ocr="always")
    assert always.stats.get("ocr_images") == 1 and "ocr_previews" not in always.stats
    text_page(LINES).save(tmp_path / "scan.png")
    doc = _load(tmp_path / "scan.png", ocr="never")
    assert doc.texts == () and doc.stats == {}


def test_an_icon_is_not_looked_at_for_text_unless_asked(tmp_path: Path) -> None:
    Image.new("RGB", (24, 16), "navy").save(tmp_path / "icon.png")
    doc = _load(tmp_path / "icon.png")
    assert doc.texts == () and "ocr_previews" not in doc.stats  # no detector pass on 24 x 16 pixels
    assert _load(tmp_path / "icon.png", ocr="always").stats.get("ocr_images") == 1  # asked for: read


def test_a_scanned_pdf_is_read_and_rendered_as_a_page_image(tmp_path: Path) -> None:
    pages = [text_page(LINES), text_page(["Second page says 9040 kilograms"])]
    pages[0].save(tmp_path / "scan.pdf", save_all=True, append_images=pages[1:], resolution=150)
    doc = _load(tmp_path / "scan.pdf")
    assert [b.page for b in doc.texts] == [1, 2]
    assert all(b.metadata["text_source"] == "ocr" for b in doc.texts)
    assert "9040" in doc.texts[1].text
    assert [(i.page, i.name) for i in doc.images] == [(1, "page-1.jpg"), (2, "page-2.jpg")]
    assert doc.metadata["text_layer"] is False and doc.metadata["scanned_pages"] == 2
    assert doc.stats["ocr_pages"] == 2
    never = _load(tmp_path / "scan.pdf", ocr="never")
    assert never.texts == () and len(never.images) == 2  # page images are on for scans whatever --ocr says


def test_an_ocr_failure_on_one_page_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    pages = [text_page(LINES), text_page(["Second page says 9040 kilograms"])]
    pages[0].save(tmp_path / "scan.pdf", save_all=True, append_images=pages[1:], resolution=150)
    real = pdf_loader.read_text
    calls = []

    def failing_on_page_one(image, engine=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise OcrError("RuntimeException: onnxruntime failed")
        return real(image, engine)

    monkeypatch.setattr(pdf_loader, "read_text", failing_on_page_one)
    doc = _load(tmp_path / "scan.pdf")
    assert [b.page for b in doc.texts] == [2] and doc.stats["ocr_failed"] == 1
    assert "page 1 could not be rendered or read" in caplog.text and str(tmp_path / "scan.pdf") in caplog.text


def test_engine_pickles_without_its_sessions() -> None:
    engine = RapidOcrEngine(threads=1)
    result = engine.read(text_page(LINES[:1]))
    assert "4821" in result.text
    copy = pickle.loads(pickle.dumps(engine))
    assert copy._engine is None and copy.threads == 1


def test_reading_order_joins_boxes_on_one_baseline() -> None:
    lines = [OcrLine("right", 1.0, (300, 10, 400, 30)), OcrLine("below", 1.0, (0, 50, 100, 70)),
             OcrLine("left", 1.0, (0, 12, 100, 32))]
    assert reading_order(lines) == "left right\nbelow"
