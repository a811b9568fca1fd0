"""The pixels behind an image hit: re-read from its source file (a standalone image, or one inside a PDF/DOCX/PPTX/HTML).

The vector store keeps vectors and metadata, not image bytes; the source file is the truth. So
serving a thumbnail or showing a vision model the image re-reads that file. Documents are
re-extracted at most once per (path, mtime) thanks to a small cache.
"""

from __future__ import annotations

import base64
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

from mmrag.errors import LoadError, NotFoundError
from mmrag.loaders import FileRef, load
from mmrag.types import Hit, ImageAsset

_CACHE_SIZE = 32
_cache: "OrderedDict[tuple[str, int], tuple[ImageAsset, ...]]" = OrderedDict()
_lock = threading.Lock()


def hit_image(hit: Hit) -> ImageAsset:
    """The image an image hit points to.

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
    images = _images_of(path, mtime)
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


def _images_of(path: Path, mtime: int) -> tuple[ImageAsset, ...]:
    key = (str(path), mtime)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        docs = load(FileRef.from_path(path), content_hash="")
    except LoadError as exc:
        raise NotFoundError(f"cannot re-read {path}: {exc.reason}") from exc
    images = tuple(a for d in docs for a in d.images)
    with _lock:
        _cache[key] = images
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return images
