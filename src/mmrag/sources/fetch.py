"""Reading one object: streamed to a temporary file a block at a time.

The loaders read files; an object is copied to a private temporary file a block at a time (the
memory it takes is one block, whatever its size), hashed on the way, and refused once it passes
the size limit. :func:`mmrag.indexing.steps.load_file` then loads that file as any other and gives its
documents the object's URL; nothing of a bucket is kept on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmrag.errors import LoadError
from mmrag.loaders._common import mb
from mmrag.sources.objects import ObjectRef, etag_of, filesystem, fs_path, translating

#: Bytes read from the store per request.
BLOCK = 1 << 20


def download(ref: ObjectRef, dest: Path, max_bytes: int) -> tuple[str, int, str]:
    """Copy the object to ``dest``; return its sha256, size and ETag (as read, not as listed)."""
    fs = filesystem(ref.path, ref.options)
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        with translating(ref.path):
            src = fs.open(fs_path(fs, ref.path), "rb", block_size=BLOCK)
        try:
            etag = etag_of(getattr(src, "details", None) or {}) or ref.etag
            while True:
                with translating(ref.path):
                    block = src.read(BLOCK)
                if not block:
                    break
                size += len(block)
                if size > max_bytes:
                    raise LoadError(ref.path, f"object is over the {mb(max_bytes)} limit (it grew since it was "
                                              "listed?); raise --max-file-mb or MMRAG_SOURCE__MAX_OBJECT_MB")
                digest.update(block)
                out.write(block)
        finally:
            with translating(ref.path):
                src.close()
    return digest.hexdigest(), size, etag
