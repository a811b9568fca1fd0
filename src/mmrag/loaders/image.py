"""Image files: checked here, read with OCR when they hold text, decoded for embedding later."""

from __future__ import annotations

import logging
import re

from mmrag.errors import LoadError
from mmrag.loaders._common import FileRef, LoaderLimits, describe, flat_metadata, image_shape_problem
from mmrag.loaders.ocr import OcrError, OcrStats, keep_text, ocr_block, read_if_text
from mmrag.types import Document, ImageAsset, TextBlock

log = logging.getLogger(__name__)

CORRUPT_REASON = "truncated or corrupt image"


def too_large_reason(pixels: int | None, limit: int) -> str:
    """The reason given for an image over the pixel limit."""
    size = f"{pixels:,} pixels > {limit:,}" if pixels is not None else f"over {limit:,} pixels"
    return f"image too large ({size} limit) — possible decompression bomb"


def load_image(ref: FileRef, *, content_hash: str, limits: LoaderLimits) -> Document:
    """Check that an image file decodes, and return it as a document with one image asset.

    The header is read first, so a decompression bomb is refused, and an image of an extreme
    aspect ratio skipped (:func:`~mmrag.loaders.image_shape_problem`), before any pixel is decoded.
    The image is then fully decoded once, so truncated and corrupt files fail here, with a
    clear reason, rather than in the embedding batch; the pixels are not kept (the asset
    points at the file). Unless ``limits.ocr`` is ``never`` the decoded image is read with OCR
    too, and its text kept as a block (``text_source: ocr``) when the detector finds enough of
    it (:func:`~mmrag.loaders.ocr.keep_text`): a scanned page or a table picture, not a photo.
    An OCR failure is a warning; the image is still indexed for CLIP.

    Args:
        ref: The file.
        content_hash: The file's hash.
        limits: Resource limits; ``max_image_pixels`` applies.

    Returns:
        A ``doc_type="image"`` document whose single asset has ``path`` set, and the OCR text
        if any; ``metadata`` has ``width``, ``height`` and ``format``.

    Raises:
        LoadError: If the image is too large, not an image, truncated or corrupt; with
            ``skipped=True`` when its aspect ratio is over ``limits.max_image_aspect``.
    """
    from PIL import Image, UnidentifiedImageError

    path = str(ref.path)
    stats = OcrStats()
    texts: tuple[TextBlock, ...] = ()
    try:
        with Image.open(ref.path) as img:
            width, height = img.size
            fmt = img.format or ref.suffix.lstrip(".").upper()
            if width * height > limits.max_image_pixels:
                raise LoadError(path, too_large_reason(width * height, limits.max_image_pixels))
            problem = image_shape_problem(width, height, limits)
            if problem is not None:  # before decoding: OCR's and CLIP's resizes would blow it up
                raise LoadError(path, f"{problem}; not indexed", skipped=True)
            img.load()
            if limits.ocr != "never":
                texts = _ocr(path, img, limits.ocr, stats)
    except LoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (twice MAX_IMAGE_PIXELS, or once when warnings are errors).
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(match.group(1)) if match else None
        raise LoadError(path, too_large_reason(pixels, limits.max_image_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise LoadError(path, f"{CORRUPT_REASON}: not a format Pillow recognises") from exc
    except OSError as exc:
        if exc.filename is not None or isinstance(exc, PermissionError | FileNotFoundError):
            raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
        raise LoadError(path, f"{CORRUPT_REASON} ({describe(exc)})") from exc
    except Exception as exc:  # Pillow plugins also raise SyntaxError, ValueError, struct.error...
        raise LoadError(path, f"{CORRUPT_REASON} ({type(exc).__name__}: {describe(exc)})") from exc
    return Document(
        doc_id=ref.doc_id,
        source=path,
        doc_type="image",
        content_hash=content_hash,
        texts=texts,
        images=(ImageAsset(path=path),),
        metadata=flat_metadata({"width": width, "height": height, "format": fmt}),
        stats=stats.as_stats(),
    )


def _ocr(path: str, img: object, mode: str, stats: OcrStats) -> tuple[TextBlock, ...]:
    try:
        result = read_if_text(img, mode, stats)
    except OcrError as exc:
        log.warning("%s: OCR failed (%s); indexed as a picture only", path, exc)
        stats.failed += 1
        return ()
    return (ocr_block(result, None),) if result is not None and keep_text(result, mode) else ()
