"""PDF files: text per page and embedded images (pypdf), OCR and page renders (pypdfium2), tables.

Pages whose text layer is missing or negligible are rendered at :data:`OCR_DPI` and read with
OCR (``--ocr auto``), and are indexed as a rendered page image as well, so CLIP sees the page;
``--page-images`` renders every page. Tables on pages with a text layer become Markdown blocks
(:mod:`mmrag.loaders.pdftables`); the PDF outline, where there is one, gives each page's blocks
a ``section`` path.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import Any

from mmrag.errors import LoadError
from mmrag.loaders._common import (
    MIN_IMAGE_SIDE,
    FileRef,
    LoaderLimits,
    check_text_size,
    flat_metadata,
    image_shape_problem,
    normalize_newlines,
    translating,
)
from mmrag.loaders.budget import DocumentBudget
from mmrag.loaders.layout import SectionPath, section_meta, table_blocks
from mmrag.loaders.ocr import OcrError, OcrStats, ocr_block, ocr_images, read_text
from mmrag.loaders.pdftables import page_tables, ruled_candidates
from mmrag.types import Document, ImageAsset, TextBlock

log = logging.getLogger(__name__)

#: A page with fewer text-layer characters than this (a page number or a stray header is all
#: such a layer holds), whose images cover :data:`MIN_SCAN_COVERAGE` of it, is a scan.
MIN_TEXT_LAYER_CHARS = 20
MIN_SCAN_COVERAGE = 0.3
#: Render resolution for OCR: PP-OCR reads 10-pt text well from 150 DPI; 200 costs 1.8x the
#: detector time for no gain measured on the ingest_docs scans.
OCR_DPI = 150
#: Page images for CLIP are cut to this many pixels on the long side (CLIP sees 224 px).
PAGE_IMAGE_SIDE = 1024
#: A render never exceeds this many pixels, whatever the page size says.
MAX_RENDER_PIXELS = 25_000_000

ENCRYPTED_REASON = "encrypted PDF: a password is required; decrypt it first (e.g. qpdf --decrypt)"
AES_REASON = (
    "encrypted PDF uses AES, which needs the 'cryptography' package to read even without a "
    "password: pip install 'pypdf[crypto]'"
)
NO_CONTENT_REASON = "no text layer and no images (scanned PDF? run OCR first)"


def _open(path: str) -> Any:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    with translating(path, "PDF"):
        # strict=False lets pypdf repair broken xref tables and offsets instead of giving up.
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted:
            # Owner-password ("copy-protected") PDFs open with the empty user password.
            try:
                decrypted = reader.decrypt("")
            except DependencyError as exc:
                raise LoadError(path, AES_REASON) from exc
            except FileNotDecryptedError as exc:
                raise LoadError(path, ENCRYPTED_REASON) from exc
            if not decrypted:
                raise LoadError(path, ENCRYPTED_REASON)
        return reader


def _xobject_images(page: Any) -> list[tuple[list[str], Any]]:
    """List a page's image XObjects, including those inside form XObjects, without decoding.

    pypdf's ``page.images.keys()`` also parses the whole content stream to find inline images,
    which doubles the cost of a text page; this walks the resource dictionaries only.

    Returns:
        ``(id_path, xobject)`` pairs; ``id_path`` is what ``page.images[...]`` accepts.
    """
    found: list[tuple[list[str], Any]] = []
    stack: list[tuple[Any, list[str]]] = [(page, [])]
    seen_forms: set[tuple[int, int]] = set()
    while stack:
        obj, trail = stack.pop()
        try:
            xobjects = obj["/Resources"].get_object()["/XObject"].get_object()
            names = sorted(xobjects)
        except Exception:  # no resources, or a malformed resource tree: no images here
            log.debug("PDF resource tree unreadable; its images are left out", exc_info=True)
            continue
        for name in names:
            try:
                xobj = xobjects[name].get_object()
                subtype = xobj.get("/Subtype")
            except Exception:  # a dangling reference
                log.debug("PDF XObject %s unreadable; left out", name, exc_info=True)
                continue
            if subtype == "/Image":
                found.append(([*trail, name], xobj))
            elif subtype == "/Form" and len(trail) < 8:
                ref = xobj.indirect_reference
                key = (ref.idnum, ref.generation) if ref is not None else (-1, id(xobj))
                if key not in seen_forms:  # forms can (illegally) contain themselves
                    seen_forms.add(key)
                    stack.append((xobj, [*trail, name]))
    return found


def _keep_declared(xobj: Any, limits: LoaderLimits) -> bool:
    # Judged from the XObject dictionary, before pypdf decodes (and possibly inflates) pixels:
    # stencil masks are shapes, not pictures; tiny images are bullets and rules.
    if xobj.get("/ImageMask", False):
        return False
    try:
        width, height = int(xobj.get("/Width", 0)), int(xobj.get("/Height", 0))
    except (TypeError, ValueError):
        return True
    if width and height:
        if min(width, height) < MIN_IMAGE_SIDE:
            return False
        if image_shape_problem(width, height, limits) is not None:
            return False
    return True


def _decode(page: Any, image_id: str | list[str], limits: LoaderLimits) -> tuple[bytes, str] | None:
    """Decode one image through pypdf; ``None`` when it is unusable."""
    try:
        found = page.images[image_id]
        data, name = found.data, found.name
        size = found.image.size if found.image is not None else None
    except Exception:  # undecodable image data (unsupported filter, corrupt stream)
        log.debug("PDF image undecodable; left out", exc_info=True)
        return None
    if not data:
        return None
    if size is not None and (min(size) < MIN_IMAGE_SIDE or image_shape_problem(size[0], size[1], limits) is not None):
        return None
    return data, name


def _page_images(
    page: Any, page_no: int, start: int, seen: set[tuple[int, int]], limits: LoaderLimits, *, has_text: bool
) -> tuple[list[ImageAsset], int]:
    """Extract one page's images; returns ``(images, n_skipped)``. One bad image skips only itself.

    Inline images (``BI ... EI`` in the content stream) are only looked for on a page with no
    text and no image XObjects, where they may be the scan itself; elsewhere the PDF spec
    keeps them small (icons, rules) and finding them means parsing the content stream again.
    """
    images: list[ImageAsset] = []
    skipped = 0
    xobjects = _xobject_images(page)
    for trail, xobj in xobjects:
        ref = xobj.indirect_reference
        key = (ref.idnum, ref.generation) if ref is not None else None
        if key is not None:
            if key in seen:
                continue  # the same logo on every page is one image (or one skip)
            seen.add(key)
        decoded = None
        if _keep_declared(xobj, limits):
            decoded = _decode(page, trail[0] if len(trail) == 1 else trail, limits)
        if decoded is None:
            skipped += 1
            continue
        images.append(ImageAsset(data=decoded[0], page=page_no, index=start + len(images), name=decoded[1]))
    if not xobjects and not has_text:
        try:
            inline_ids = [i for i in page.images.keys() if isinstance(i, str) and i.startswith("~")]
        except Exception:  # an unparsable content stream has no usable inline images
            log.debug("PDF content stream unparsable; its inline images are left out", exc_info=True)
            inline_ids = []
        for image_id in inline_ids:
            decoded = _decode(page, image_id, limits)
            if decoded is None:
                skipped += 1
                continue
            images.append(ImageAsset(data=decoded[0], page=page_no, index=start + len(images), name=decoded[1]))
    return images, skipped


def _title(reader: Any) -> str | None:
    try:
        meta = reader.metadata
        title = meta.title if meta is not None else None
    except Exception:  # an unreadable info dictionary is not worth failing the file over
        log.debug("PDF info dictionary unreadable; no title", exc_info=True)
        return None
    return str(title) if title else None


def load_pdf(ref: FileRef, *, content_hash: str, limits: LoaderLimits) -> Document:
    """Load a PDF: one text block per page that has text, and every embedded raster image.

    Encrypted PDFs are opened with the empty password, which is all an owner-password
    ("copy-protected") PDF needs. Images are deduplicated (an image drawn on many pages is kept
    once, on its first page); stencil masks, images under 16 px on a side and images over
    ``limits.max_image_pixels`` are skipped and counted in ``metadata["images_skipped"]``. A page
    whose text cannot be extracted is counted in ``metadata["pages_failed"]`` rather than
    failing the file.

    Args:
        ref: The file.
        content_hash: The file's hash.
        limits: Resource limits.

    Returns:
        The document. ``metadata`` has ``n_pages``, ``text_layer`` (whether any page has
        text) and ``title`` when the PDF declares one. A PDF with images but no text layer
        loads with its images alone.

    Raises:
        LoadError: If the PDF is encrypted with a user password, unreadable, or has neither text
            nor images (``skipped=True``).
    """
    from pypdf.errors import DependencyError, FileNotDecryptedError

    path = str(ref.path)
    budget = DocumentBudget(path, limits)
    reader = _open(path)
    texts: list[TextBlock] = []
    images: list[ImageAsset] = []
    seen: set[tuple[int, int]] = set()
    candidates: list[int] = []  # pages with images and no (or a negligible) text layer
    n_chars = 0
    pages_failed = images_skipped = 0
    with translating(path, "PDF"):
        pages = reader.pages
        n_pages = len(pages)
        budget.pages(n_pages)
        for page_no in range(1, n_pages + 1):
            budget.check()  # outside the per-page handlers below, which keep a bad page from failing the file
            try:
                page = pages[page_no - 1]
            except Exception:  # a damaged page tree entry costs that page, not the whole file
                log.warning("%s: page %d unreadable; left out", path, page_no, exc_info=True)
                pages_failed += 1
                continue
            try:
                text = normalize_newlines((page.extract_text() or "").replace("\x00", ""))
            except FileNotDecryptedError as exc:
                raise LoadError(path, ENCRYPTED_REASON) from exc
            except DependencyError as exc:
                # AES-encrypted streams are only decrypted when read, so this shows up here.
                reason = AES_REASON if reader.is_encrypted else f"cannot read the PDF: {exc}"
                raise LoadError(path, reason) from exc
            except Exception:  # a damaged content stream: the page's images may still be fine
                log.warning("%s: text of page %d unreadable; left out", path, page_no, exc_info=True)
                pages_failed += 1
                text = ""
            if text.strip():
                n_chars += len(text)
                check_text_size(path, n_chars, limits)
                texts.append(TextBlock(text=text, page=page_no))
            has_text = bool(text.strip())
            page_images, skipped = _page_images(page, page_no, len(images), seen, limits, has_text=has_text)
            images.extend(page_images)
            budget.images(len(images))
            images_skipped += skipped
            if len(text.strip()) < MIN_TEXT_LAYER_CHARS and (page_images or skipped):
                candidates.append(page_no)  # a scan if its images cover the page (see _enrich)
        title = _title(reader)
        sections = _outline_sections(reader, n_pages)
    stats = OcrStats()
    texts, images, scanned = _enrich(path, texts, images, candidates, sections, limits, stats, budget)
    if n_pages and pages_failed == n_pages and not images:
        raise LoadError(path, f"could not extract text from any of the {n_pages} pages (damaged PDF?)")
    if not texts and not images:
        reason = NO_CONTENT_REASON if n_pages else "the PDF has no pages"
        raise LoadError(path, reason, skipped=True)
    meta: dict[str, object] = {"n_pages": n_pages, "text_layer": any(b.metadata.get("text_source") != "ocr" for b in texts),
                               "title": title}
    if scanned:
        meta["scanned_pages"] = scanned
    if reader.is_encrypted:
        meta["encrypted"] = True
    if pages_failed:
        meta["pages_failed"] = pages_failed
    if images_skipped:
        meta["images_skipped"] = images_skipped
    return Document(
        doc_id=ref.doc_id,
        source=path,
        doc_type="pdf",
        content_hash=content_hash,
        texts=tuple(texts),
        images=tuple(images),
        metadata=flat_metadata(meta),
        stats=stats.as_stats(),
    )



# --- outline, OCR, page images and tables -----------------------------------------------------


def _outline_sections(reader: Any, n_pages: int) -> dict[int, str]:
    """Each page's section path from the PDF outline (bookmarks): the last heading that starts
    on or before the page, with its parents. Empty when the PDF has no outline."""
    entries: list[tuple[int, int, str]] = []  # (page, level, title) in outline order

    def walk(items: Any, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
                title = str(item.title or "")
            except Exception:  # a dangling bookmark names no page; the rest still count
                log.debug("PDF outline entry unreadable; left out", exc_info=True)
                continue
            if page is not None and page >= 0 and title.strip():
                entries.append((page + 1, level, title))

    try:
        walk(reader.outline, 1)
    except Exception:  # a malformed outline tree: no sections, the text is unaffected
        log.debug("PDF outline unreadable; no sections", exc_info=True)
        return {}
    entries.sort(key=lambda e: e[0])  # stable: outline order within a page
    out: dict[int, str] = {}
    path = SectionPath()
    i = 0
    for page_no in range(1, n_pages + 1):
        while i < len(entries) and entries[i][0] <= page_no:
            path.enter(entries[i][1], entries[i][2])
            i += 1
        section = path.text()
        if section:
            out[page_no] = section
    return out


def _render(page: Any, dpi: int) -> Any:
    """Render one pdfium page to a PIL image at ``dpi``, capped at :data:`MAX_RENDER_PIXELS`."""
    width, height = page.get_size()  # points
    scale = dpi / 72
    pixels = width * height * scale * scale
    if pixels > MAX_RENDER_PIXELS:
        scale *= (MAX_RENDER_PIXELS / pixels) ** 0.5
    return page.render(scale=scale).to_pil()


def _page_image(image: Any, page_no: int) -> ImageAsset:
    thumb = image.convert("RGB")
    thumb.thumbnail((PAGE_IMAGE_SIDE, PAGE_IMAGE_SIDE))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return ImageAsset(data=buf.getvalue(), page=page_no, name=f"page-{page_no}.jpg")


def _enrich(
    path: str,
    texts: list[TextBlock],
    images: list[ImageAsset],
    candidates: list[int],
    sections: dict[int, str],
    limits: LoaderLimits,
    stats: OcrStats,
    budget: DocumentBudget,
) -> tuple[list[TextBlock], list[ImageAsset], int]:
    """Add what the text layer lacks: OCR text, page images, tables, section paths.

    Scanned pages (and every page under ``--ocr always``) are rendered once and that render is
    both read by OCR and kept as the page image; the page image stands in for the scan's own
    embedded images, which are the same pixels. A page that fails to render or read is logged
    and counted in ``stats.failed``; the rest of the document still loads. ``budget`` is checked
    before each page (OCR seconds, load time) and on the images kept.

    Returns:
        The blocks, the images and the number of scanned pages.
    """
    import pypdfium2 as pdfium

    with_text = {b.page for b in texts if b.page is not None}
    if not (candidates or with_text or limits.page_images or limits.ocr == "always"):
        return texts, images, 0
    try:
        pdf = pdfium.PdfDocument(path)
    except Exception as exc:  # pdfium refuses what pypdf repaired: keep what pypdf read
        log.warning("%s: pdfium cannot open it (%s); no OCR, page images or tables", path, exc)
        stats.failed += len(candidates)
        return [_with_section(b, sections) for b in texts], images, 0
    scanned = {p for p in candidates if _image_coverage(pdf[p - 1]) >= MIN_SCAN_COVERAGE}
    every_page = set(range(1, len(pdf) + 1))
    ocr_pages = (every_page if limits.ocr == "always" else scanned) if limits.ocr != "never" else set()
    image_pages = every_page if limits.page_images else scanned
    table_pages = with_text - ocr_pages - scanned
    ocr_blocks: list[TextBlock] = []
    table_texts: list[TextBlock] = []
    rendered: list[ImageAsset] = []
    try:
        for page_no in sorted(ocr_pages | image_pages):
            budget.check(stats.seconds)
            width, height = pdf[page_no - 1].get_size()
            problem = image_shape_problem(max(1, round(width)), max(1, round(height)), limits)
            if problem is not None:  # a strip of a page: its render, OCR and CLIP resizes would explode
                log.warning("%s: page %d not rendered: %s", path, page_no, problem)
                stats.failed += 1
                continue
            try:
                picture = _render(pdf[page_no - 1], OCR_DPI)
                if page_no in ocr_pages:
                    result = read_text(picture)
                    stats.pages += 1
                    stats.seconds += result.seconds
                    if result.text.strip():
                        ocr_blocks.append(ocr_block(result, page_no, **section_meta(sections.get(page_no))))
                if page_no in image_pages:
                    rendered.append(_page_image(picture, page_no))
            except (OcrError, pdfium.PdfiumError, OSError, ValueError) as exc:
                log.warning("%s: page %d could not be rendered or read (%s); left out", path, page_no, exc)
                stats.failed += 1
        table_texts = _tables(path, pdf, sorted(table_pages), sections)
    finally:
        pdf.close()
    # The pixels' reading replaces the text layer where OCR ran (under ``always``, or a scan's stray layer).
    texts = [b for b in texts if b.page not in ocr_pages]
    embedded_ocr = ocr_images(path, [i for i in images if i.page in with_text - ocr_pages], limits.ocr, stats,
                              budget=budget)
    replaced = {i.page for i in rendered if i.page in scanned}
    kept = [i for i in images if i.page not in replaced]
    blocks = [_with_section(b, sections) for b in texts] + ocr_blocks + table_texts + embedded_ocr
    blocks.sort(key=lambda b: b.page or 0)  # stable: text layer, OCR, tables within a page
    merged = sorted(kept + rendered, key=lambda i: i.page or 0)
    budget.images(len(merged))
    return blocks, [replace(img, index=n) for n, img in enumerate(merged)], len(scanned)


def _image_coverage(page: Any) -> float:
    """Share of the page area that its image objects cover (tiles of one scan add up)."""
    import pypdfium2.raw as pdfium_c

    width, height = page.get_size()
    area = 0.0
    try:
        for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3):
            left, bottom, right, top = obj.get_bounds()
            area += max(0.0, min(right, width) - max(left, 0.0)) * max(0.0, min(top, height) - max(bottom, 0.0))
    except Exception:  # unreadable object list: not treated as a scan
        log.debug("page objects unreadable", exc_info=True)
        return 0.0
    return area / (width * height) if width and height else 0.0


def _with_section(block: TextBlock, sections: dict[int, str]) -> TextBlock:
    section = sections.get(block.page or 0)
    return replace(block, metadata={**block.metadata, "section": section}) if section else block


def _tables(path: str, pdf: Any, pages: list[int], sections: dict[int, str]) -> list[TextBlock]:
    """Markdown blocks for the tables on ``pages``; pdfplumber opens the file only if needed."""
    candidates = []
    for page_no in pages:
        try:
            if ruled_candidates(pdf[page_no - 1]):
                candidates.append(page_no)
        except Exception:  # an unreadable page object list: no tables on this page
            log.debug("%s: page %d objects unreadable; no tables", path, page_no, exc_info=True)
    if not candidates:
        return []
    import pdfplumber

    blocks: list[TextBlock] = []
    try:
        with pdfplumber.open(path) as doc:
            for page_no in candidates:
                try:
                    found = page_tables(doc.pages[page_no - 1])
                except Exception as exc:  # pdfminer's long tail: this page's tables only
                    log.warning("%s: tables on page %d unreadable (%s); left out", path, page_no, exc)
                    continue
                for n, rows in enumerate(found, start=1):
                    parts = table_blocks(rows, page=page_no, section=sections.get(page_no), table=n)
                    # A one-row or one-column "table" is a rule under a line of text the page
                    # block already holds.
                    blocks += [p for p in parts if p.metadata.get("content") == "table"]
    except Exception as exc:  # pdfplumber cannot open what pypdf read: the text is still there
        log.warning("%s: pdfplumber cannot open it (%s); tables left out", path, exc)
    return blocks
