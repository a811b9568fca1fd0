"""Word (``.docx``) and PowerPoint (``.pptx``) files, through python-docx and python-pptx."""

from __future__ import annotations

import logging

import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from mmrag.errors import LoadError
from mmrag.loaders._common import (
    FileRef,
    LoaderLimits,
    check_text_size,
    flat_metadata,
    image_header_ok,
    mb,
    normalize_newlines,
    tidy_blank_lines,
    translating,
)
from mmrag.loaders.budget import DocumentBudget
from mmrag.loaders.layout import SectionPath, section_meta, table_blocks
from mmrag.loaders.ocr import OcrStats, ocr_images
from mmrag.types import Document, ImageAsset, TextBlock

log = logging.getLogger(__name__)

# XML parts compress about tenfold and media hardly at all, so an archive that expands past
# this multiple of the file-size limit is a zip bomb rather than a document.
_MAX_EXPANSION = 5


def _check_archive(path: str, limits: LoaderLimits, what: str) -> None:
    """Refuse files that are not ZIP archives, or that would expand to an absurd size."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise LoadError(path, f"not a valid {what} file (not a ZIP archive; an old binary format or damaged?)") from exc
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    cap = _MAX_EXPANSION * limits.max_file_bytes
    if total > cap:
        raise LoadError(path, f"archive expands to {mb(total)}, over {mb(cap)} (possible zip bomb)")


_W_TEXT = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}t"
_A_TEXT = "{http://schemas.openxmlformats.org/drawingml/2006/main}t"
# Markup-compatibility fallbacks repeat the content of the choice before them (VML copies of text
# boxes), so text inside them would be counted twice.
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_OFFICE_DOCUMENT = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
_PPTX_TEXT_PARTS = re.compile(r"^ppt/(slides|notesSlides)/[^/]+\.xml$")


def _docx_text_parts(archive: zipfile.ZipFile) -> list[str]:
    """The main document part: named by the package relationships, usually word/document.xml."""
    from lxml import etree

    name = "word/document.xml"
    try:
        info = archive.getinfo("_rels/.rels")
    except KeyError:
        info = None
    if info is not None and info.file_size < 1024 * 1024:
        rels = etree.fromstring(archive.read(info), etree.XMLParser(resolve_entities=False, no_network=True))
        for rel in rels:
            if rel.get("Type") == _OFFICE_DOCUMENT and rel.get("Target"):
                name = posixpath.normpath(rel.get("Target", "").lstrip("/"))
                break
    return [name] if name in archive.NameToInfo else []


def _pptx_text_parts(archive: zipfile.ZipFile) -> list[str]:
    return [name for name in archive.namelist() if _PPTX_TEXT_PARTS.match(name)]


def _refuse_oversize_text(
    path: str, parts: Callable[[zipfile.ZipFile], list[str]], text_tag: str, limits: LoaderLimits
) -> None:
    """Stream the parts' XML and refuse the file once its text passes ``limits.max_text_chars``.

    python-docx and python-pptx build the whole object tree before any text can be measured:
    a 2 MB file of short paragraphs took gigabytes that way. Here each element is dropped as soon
    as it ends, so memory stays at a few MB whatever the size. Only ``w:t``/``a:t`` text is
    counted, not the separators the extractors add, so a file refused here would also be
    refused after extraction; a part this cannot find is simply left to that later check.

    Raises:
        LoadError: When the text is over the limit. lxml's own errors are left to the caller's
            :func:`translating` block.
    """
    from lxml import etree

    total = 0
    with zipfile.ZipFile(path) as archive:
        for name in parts(archive):
            with archive.open(name) as stream:
                in_fallback = 0
                events = etree.iterparse(stream, events=("start", "end"), resolve_entities=False, no_network=True)
                for event, element in events:
                    if element.tag == _MC_FALLBACK:
                        in_fallback += 1 if event == "start" else -1
                    if event == "start":
                        continue
                    if element.tag == text_tag and not in_fallback:
                        total += len(element.text or "")
                        if total > limits.max_text_chars:
                            raise LoadError(
                                path,
                                f"text is over the {limits.max_text_chars:,} character limit (stopped counting "
                                f"at {total:,} characters, in {name}); split the file",
                            )
                    # The documented iterparse idiom: free what has been read.
                    element.clear()
                    while element.getprevious() is not None:
                        del element.getparent()[0]


def _natural_key(name: str) -> list[object]:
    # image2.png sorts before image10.png
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --- DOCX -----------------------------------------------------------------------------------


def _docx_table_rows(table: Any) -> list[list[str]]:
    rows: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # python-docx repeats a merged cell once per grid column it spans: keep the grid
            # (so columns line up under the header) but the text once.
            if cell._tc is previous:
                cells.append("")
                continue
            previous = cell._tc
            cells.append(" ".join(" / ".join(_docx_block_lines(cell)).split()))
        rows.append(cells)
    return rows


def _docx_table_lines(table: Any) -> Iterator[str]:
    for cells in _docx_table_rows(table):
        if any(cells):
            yield " | ".join(c for c in cells if c)


def _docx_block_lines(container: Any) -> Iterator[str]:
    from docx.table import Table

    for item in container.iter_inner_content():
        if isinstance(item, Table):
            yield from _docx_table_lines(item)
        else:
            text = item.text.strip()
            if text:
                yield text


_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def _heading_level(paragraph: Any) -> int | None:
    """1-9 for Word's built-in heading styles, 0 for Title (above them all), else ``None``."""
    try:
        name = str(paragraph.style.name or "") if paragraph.style is not None else ""
    except Exception:  # a style id the styles part does not define
        return None
    if name.lower() == "title":
        return 0
    match = _HEADING_STYLE.match(name.strip())
    return int(match.group(1)) if match else None


def _docx_blocks(document: Any) -> list[TextBlock]:
    """Body text as one block per heading section, and each table as Markdown blocks."""
    from docx.table import Table

    blocks: list[TextBlock] = []
    lines: list[str] = []
    path = SectionPath()
    section: str | None = None

    def cut() -> None:
        text = normalize_newlines(tidy_blank_lines("\n\n".join(lines)))
        lines.clear()
        if text:
            blocks.append(TextBlock(text=text, metadata=section_meta(section)))

    for item in document.iter_inner_content():
        if isinstance(item, Table):
            parts = table_blocks(_docx_table_rows(item), section=section)
            if any(part.metadata.get("content") == "table" for part in parts):
                cut()
                blocks.extend(parts)
            else:
                lines.extend(_docx_table_lines(item))
            continue
        text = item.text.strip()
        level = _heading_level(item) if text else None
        if level is not None:
            cut()
            path.enter(level, text)
            section = path.text()
        if text:
            lines.append(text)
    cut()
    return blocks


def _docx_images(document: Any, limits: LoaderLimits) -> tuple[list[ImageAsset], int]:
    # /docProps/thumbnail.* is a preview of the first page that Word saves, not content.
    parts = [
        p
        for p in document.part.package.iter_parts()
        if str(p.content_type).startswith("image/") and not str(p.partname).startswith("/docProps/")
    ]
    parts.sort(key=lambda p: _natural_key(str(p.partname)))
    images: list[ImageAsset] = []
    skipped = 0
    for part in parts:
        data = part.blob
        if not image_header_ok(data, limits):
            skipped += 1
            continue
        images.append(ImageAsset(data=data, index=len(images), name=posixpath.basename(str(part.partname))))
    return images, skipped


def load_docx(ref: FileRef, *, content_hash: str, limits: LoaderLimits) -> Document:
    """Load a Word document: body paragraphs and tables in order, and the embedded images.

    The body becomes one text block per heading section (Word's ``Title`` and ``Heading 1-9``
    styles), each with its ``section`` path. A table with a header and at least one row becomes
    Markdown blocks of its own (``content: table``; merged cells once); a one-row or one-column
    table stays in the text as lines with cells joined by ``" | "``. Headers, footers, text
    boxes and comments are not read. Embedded images that hold text are read with OCR
    (``limits.ocr``; :func:`~mmrag.loaders.ocr.ocr_images`). Every raster image part in the package (but
    the saved page thumbnail) is an image asset, in part-name order; vector (EMF/WMF), tiny and
    unreadable images are skipped and counted in ``metadata["images_skipped"]``.

    Args:
        ref: The file.
        content_hash: The file's hash.
        limits: Resource limits.

    Returns:
        One document (``page`` is ``None`` on every block: DOCX has no fixed pages).

    Raises:
        LoadError: If the file is not a readable DOCX, or has neither text nor images
            (``skipped=True``).
    """
    path = str(ref.path)
    budget = DocumentBudget(path, limits)
    _check_archive(path, limits, "DOCX")
    with translating(path, "DOCX file"):
        _refuse_oversize_text(path, _docx_text_parts, _W_TEXT, limits)
        import docx

        document = docx.Document(path)
        blocks = _docx_blocks(document)
        images, skipped = _docx_images(document, limits)
        budget.images(len(images))
        budget.check()
        title = document.core_properties.title
    stats = OcrStats()
    blocks += ocr_images(path, images, limits.ocr, stats, budget=budget)
    return _office_document(ref, "docx", content_hash, blocks, images, limits,
                            {"title": title, "images_skipped": skipped or None}, stats)


# --- PPTX -----------------------------------------------------------------------------------


def _pptx_shapes(shapes: Any) -> Iterator[Any]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    stack = [iter(shapes)]
    while stack:
        shape = next(stack[-1], None)
        if shape is None:
            stack.pop()
            continue
        yield shape
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            stack.append(iter(shape.shapes))


def _pptx_slide(
    slide: Any, slide_no: int, start: int, seen: set[str], limits: LoaderLimits
) -> tuple[str, list[ImageAsset], int]:
    """Text, pictures and the skipped-picture count of one slide."""
    from pptx.shapes.picture import Picture

    lines: list[str] = []
    images: list[ImageAsset] = []
    skipped = 0
    for shape in _pptx_shapes(slide.shapes):
        if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            text = shape.text_frame.text.strip()
            if text:
                lines.append(text)
        if getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                if any(cells):
                    lines.append(" | ".join(cells))
        if isinstance(shape, Picture):
            try:
                image = shape.image
                data, sha1, filename = image.blob, image.sha1, image.filename
            except Exception:  # a linked (not embedded) or missing picture
                log.debug("slide %d: picture left out (linked or missing)", slide_no, exc_info=True)
                skipped += 1
                continue
            if sha1 in seen:
                continue  # the same picture on many slides is one image
            if not image_header_ok(data, limits):
                skipped += 1
                continue
            seen.add(sha1)
            name = filename or f"slide{slide_no}-image{len(images)}.{image.ext}"
            images.append(ImageAsset(data=data, page=slide_no, index=start + len(images), name=name))
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        if notes is not None and notes.text.strip():
            lines.append(notes.text.strip())
    return normalize_newlines("\n\n".join(lines)).replace("\x0b", "\n"), images, skipped


def load_pptx(ref: FileRef, *, content_hash: str, limits: LoaderLimits) -> Document:
    """Load a PowerPoint deck: one text block per slide, and the slides' pictures.

    A slide's text is its text frames (grouped shapes included), tables (cells joined with
    ``" | "``) and speaker notes, in shape order. Picture shapes become image assets with
    ``page`` set to the slide number; a picture used on several slides is kept once.

    Args:
        ref: The file.
        content_hash: The file's hash.
        limits: Resource limits.

    Returns:
        The document; ``metadata["n_slides"]`` is the slide count.

    Raises:
        LoadError: If the file is not a readable PPTX, or has neither text nor pictures
            (``skipped=True``).
    """
    path = str(ref.path)
    budget = DocumentBudget(path, limits)
    _check_archive(path, limits, "PPTX")
    texts: list[TextBlock] = []
    images: list[ImageAsset] = []
    seen: set[str] = set()
    skipped = 0
    with translating(path, "PPTX file"):
        _refuse_oversize_text(path, _pptx_text_parts, _A_TEXT, limits)
        import pptx

        deck = pptx.Presentation(path)
        slides = list(deck.slides)
        budget.pages(len(slides))
        for slide_no, slide in enumerate(slides, start=1):
            budget.check()
            text, slide_images, slide_skipped = _pptx_slide(slide, slide_no, len(images), seen, limits)
            if text:
                texts.append(TextBlock(text=text, page=slide_no))
            images.extend(slide_images)
            budget.images(len(images))
            skipped += slide_skipped
        title = deck.core_properties.title
    stats = OcrStats()
    texts += ocr_images(path, images, limits.ocr, stats, budget=budget)
    texts.sort(key=lambda b: b.page or 0)
    return _office_document(ref, "pptx", content_hash, texts, images, limits,
                            {"n_slides": len(slides), "title": title, "images_skipped": skipped or None}, stats)


def _office_document(
    ref: FileRef,
    doc_type: str,
    content_hash: str,
    texts: list[TextBlock],
    images: list[ImageAsset],
    limits: LoaderLimits,
    meta: dict[str, object],
    stats: OcrStats,
) -> Document:
    path = str(ref.path)
    if not texts and not images:
        raise LoadError(path, f"the {doc_type.upper()} file has no text and no images", skipped=True)
    check_text_size(path, sum(len(block.text) for block in texts), limits)
    return Document(
        doc_id=ref.doc_id,
        source=path,
        doc_type=doc_type,
        content_hash=content_hash,
        texts=tuple(texts),
        images=tuple(images),
        metadata=flat_metadata(meta),
        stats=stats.as_stats(),
    )
