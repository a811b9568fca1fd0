"""Image bytes at the API's edges: query images sent by clients, and the pixels behind an image hit.

A query image (:func:`query_image`) arrives as base64 and is checked here, header first, so a
decompression bomb, an image of an extreme aspect ratio (which the embedder's resize would blow
up to gigabytes) or a file Pillow cannot read is an :class:`~mmrag.errors.InvalidInputError`
naming the request field, never a Pillow exception.

The vector store keeps vectors and metadata, not image bytes; the source file is the truth. So
serving a thumbnail or showing a vision model the image re-reads that file. An owner that serves
images repeatedly (the server) keeps an :class:`ImageCache`, so a document is re-extracted at most
once per (path, mtime) while it stays among the cache's recent entries.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from mmrag.errors import InvalidInputError, LoadError, NotFoundError, PayloadTooLargeError
from mmrag.loaders import FileRef, LoaderLimits, image_shape_problem, load
from mmrag.types import Hit, ImageAsset

#: The pixel limit of query images: the one ingestion applies to image files.
MAX_QUERY_PIXELS = LoaderLimits.max_image_pixels


def query_image(value: str, field: str, *, max_pixels: int = MAX_QUERY_PIXELS) -> ImageAsset:
    """Check an image sent with a request (base64, or a ``data:`` URI) and wrap it as an asset.

    Only the header is parsed and the file's structure verified: decoding the pixels is the
    embedder's job, and a decompression bomb must be refused before anything allocates them. So
    must an image of an extreme aspect ratio: a 1x120,000 PNG of 553 bytes passes the pixel
    count, and CLIP's resize (short side up to its input size) made it 64x7,680,000 pixels.

    Args:
        value: base64 bytes, or a ``data:image/...;base64,`` URI.
        field: the request field it came in (``image``, ``messages[0].image_url``), named in errors.
        max_pixels: images with more pixels are refused.

    Returns:
        An :class:`ImageAsset` holding the bytes.

    Raises:
        InvalidInputError: not base64, not an image Pillow can read, or of an aspect ratio over
            ``LoaderLimits.max_image_aspect`` (the message names its size and the limit).
        PayloadTooLargeError: more than ``max_pixels`` pixels (a decompression bomb, or just too big).

    Example:
        >>> query_image("data:image/png;base64,iVBORw0KGgo...", "image")  # doctest: +SKIP
    """
    from PIL import Image

    raw = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{field}: not valid base64 (send base64 bytes or a data: URI)") from exc
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(_too_many_pixels(field, width * height, max_pixels))
            problem = image_shape_problem(width, height, LoaderLimits(max_image_pixels=max_pixels))
            if problem is not None:
                raise InvalidInputError(f"{field}: {problem} (CLIP sees about 224x224 pixels)")
            img.verify()
    except InvalidInputError:
        raise  # a ValueError: keep it out of the clause below
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires inside open(), before the size reaches us (the warning is an
        # error only where warnings are errors); its message carries the pixel count.
        match = re.search(r"\((\d+) pixels\)", str(exc))
        raise PayloadTooLargeError(_too_many_pixels(field, int(match.group(1)) if match else None, max_pixels)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        # Pillow's plugins report a bad file with any of these (UnidentifiedImageError is an OSError).
        raise InvalidInputError(f"{field}: not an image Pillow can read ({exc}); send a PNG, JPEG, GIF, WebP, "
                                "BMP or TIFF file") from exc
    return ImageAsset(data=data)


def _too_many_pixels(field: str, pixels: int | None, limit: int) -> str:
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    # CLIP looks at 224x224 (or so) pixels, so downscaling loses nothing the search could use.
    return (f"{field}: the image has {size}, over the limit of {limit:,}; downscale it (1024 pixels on the "
            "long side is plenty for search) and send it again")


def hit_image(hit: Hit, cache: ImageCache | None = None) -> ImageAsset:
    """The image an image hit points to.

    Args:
        hit: an image hit.
        cache: the owner's cache of extracted document images; None re-extracts the document.

    Raises:
        InvalidInputError: the hit is not an image.
        NotFoundError: its source file is gone or no longer holds that image.
    """
    meta: Mapping[str, object] = hit.metadata or {}
    if hit.modality != "image":
        raise NotFoundError(f"record {hit.id!r} is a text record, not an image")
    path = Path(hit.source)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise NotFoundError(f"the source of {hit.id!r} ({path}) is gone; re-ingest to refresh the index") from exc
    if meta.get("doc_type") == "image":
        return ImageAsset(path=str(path))
    index = int(meta.get("image_index", 0))  # type: ignore[call-overload]
    images = cache.images_of(path, mtime) if cache is not None else _extract(str(path), mtime)
    match = [a for a in images if a.index == index]
    if not match:
        raise NotFoundError(f"{path} no longer holds image {index} of {hit.id!r}; re-ingest to refresh the index")
    return match[0]


def data_uri(asset: ImageAsset) -> str:
    """A ``data:`` URI of the image (for vision models and JSON responses)."""
    data = asset.read_bytes()
    return f"data:{sniff_mime(data)};base64,{base64.b64encode(data).decode()}"


def sniff_mime(data: bytes) -> str:
    """The MIME type of image bytes by their magic number (``application/octet-stream`` if unknown)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


class ImageCache:
    """The images of recently re-read documents, least recently used dropped first.

    Owned by whoever serves images (one per server), never module-global, so two apps in one
    process, or a test, each start empty. Keyed by (path, mtime): an edited file is re-read.
    Thread-safe (``functools.lru_cache``); a failed extraction is not cached.

    Args:
        size: documents kept.
    """

    def __init__(self, size: int = 32) -> None:
        self._extract = lru_cache(maxsize=size)(_extract)

    def images_of(self, path: Path, mtime: int) -> tuple[ImageAsset, ...]:
        """Every image of the document at ``path`` as it was at ``mtime`` (ns)."""
        return self._extract(str(path), mtime)

    def __len__(self) -> int:
        return self._extract.cache_info().currsize


def _extract(path: str, mtime: int) -> tuple[ImageAsset, ...]:
    # mtime is part of the cache key only: the file is read as it is now.
    try:
        docs = load(FileRef.from_path(Path(path)), content_hash="")
    except LoadError as exc:
        raise NotFoundError(f"cannot re-read {path}: {exc.reason}") from exc
    return tuple(a for d in docs for a in d.images)
