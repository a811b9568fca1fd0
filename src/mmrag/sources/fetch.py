"""Reading one object: streamed to a temporary file, loaded by the file's loader, then deleted.

The loaders read files; an object is copied to a private temporary file a block at a time (the
memory it takes is one block, whatever its size), hashed on the way, and refused once it passes
the size limit. Its documents are then loaded as a file's are, and given the object's URL as
their source; images they point to are read into memory first (they are bounded like the object),
since the file is gone by the time they are embedded. Nothing of a bucket is kept on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mmrag.errors import LoadError
from mmrag.loaders._common import FileRef, LoaderLimits, mb
from mmrag.sources.objects import (
    ObjectRef,
    SourceAccessError,
    SourceNotFoundError,
    etag_of,
    fs_path,
    filesystem,
    object_stamp,
    translating,
)

if TYPE_CHECKING:
    from mmrag.pipeline import FileResult, FileTask, LoadedDoc

#: Bytes read from the store per request.
BLOCK = 1 << 20


def load_object(task: "FileTask", load_file: Callable[["FileTask"], Iterator["LoadedDoc | FileResult"]],
                limits: LoaderLimits) -> Iterator["LoadedDoc | FileResult"]:
    """Yield the changed documents of one object, then its ``FileResult`` (as :func:`mmrag.pipeline.load_file` does).

    Args:
        task: the planned object (``task.ref`` is an :class:`ObjectRef`).
        load_file: loads a local file's task (the pipeline's own file loading).
        limits: ``max_file_bytes`` bounds the download.

    Raises:
        SourceUnreachableError: the store stopped answering; the run stops (what it wrote is kept).
    """
    from mmrag.pipeline import FileResult, FileTask

    ref: ObjectRef = task.ref  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="mmrag-object-") as tmp:
        local = Path(tmp) / f"object{ref.suffix}"
        try:
            digest, size, etag = _download(ref, local, limits.max_file_bytes)
        except SourceNotFoundError:
            yield FileResult(ref, error="the object no longer exists (deleted since it was listed); rerun with "
                                        "--prune to drop it")  # type: ignore[arg-type]
            return
        except SourceAccessError as exc:
            yield FileResult(ref, error=f"cannot read the object: {exc}")  # type: ignore[arg-type]
            return
        except LoadError as exc:
            yield FileResult(ref, error=exc.reason)  # type: ignore[arg-type]
            return
        inner = FileTask(FileRef(local, Path(tmp), ref.doc_id, ref.suffix), digest, task.state_hash,
                         task.state_status, task.known)
        stamp = object_stamp(size, etag)
        for item in load_file(inner):
            if isinstance(item, FileResult):
                yield _result(item, ref, str(local), stamp)
            else:
                yield _document(item, ref.path, str(local))


def _download(ref: ObjectRef, dest: Path, max_bytes: int) -> tuple[str, int, str]:
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


def _result(result: "FileResult", ref: ObjectRef, local: str, stamp: tuple[int, int]) -> "FileResult":
    return dataclasses.replace(
        result, ref=ref, stamp=stamp, error=result.error.replace(local, ref.path) if result.error else result.error,
        problems=[dataclasses.replace(p, source=ref.path) for p in result.problems])


def _document(item: "LoadedDoc", url: str, local: str) -> "LoadedDoc":
    doc = item.doc
    # The image documents' assets point at the temporary file, which is gone before they are embedded.
    images = tuple(dataclasses.replace(a, data=a.read_bytes(), path=None) if a.path == local else a for a in doc.images)
    metadata = {k: (url if v == local else v) for k, v in doc.metadata.items()}
    # No stamp: the writer's "changed while it was read" check stats a local file (an object's
    # next run sees a new ETag and indexes the new version).
    return dataclasses.replace(item, doc=dataclasses.replace(doc, source=url, images=images, metadata=metadata),
                               stamp=None)
