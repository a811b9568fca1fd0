"""PDF files, through pypdf: text per page and the embedded raster images."""

from __future__ import annotations

import logging

from typing import Any

from mmrag.errors import LoadError
from mmrag.loaders._common import (
    MIN_IMAGE_SIDE,
    FileRef,
    LoaderLimits,
    check_text_size,
    flat_metadata,
    normalize_newlines,
    translating,
)
from mmrag.types import Document, ImageAsset, TextBlock

log = logging.getLogger(__name__)

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
        if width * height > limits.max_image_pixels:
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
    if size is not None and (min(size) < MIN_IMAGE_SIDE or size[0] * size[1] > limits.max_image_pixels):
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
    reader = _open(path)
    texts: list[TextBlock] = []
    images: list[ImageAsset] = []
    seen: set[tuple[int, int]] = set()
    n_chars = 0
    pages_failed = images_skipped = 0
    with translating(path, "PDF"):
        pages = reader.pages
        n_pages = len(pages)
        for page_no in range(1, n_pages + 1):
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
            images_skipped += skipped
        title = _title(reader)
    if n_pages and pages_failed == n_pages and not images:
        raise LoadError(path, f"could not extract text from any of the {n_pages} pages (damaged PDF?)")
    if not texts and not images:
        reason = NO_CONTENT_REASON if n_pages else "the PDF has no pages"
        raise LoadError(path, reason, skipped=True)
    meta: dict[str, object] = {"n_pages": n_pages, "text_layer": bool(texts), "title": title}
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
    )

