"""Sources other than local files: objects in object storage (``s3://``, ``gs://``, ``https://``).

:func:`discover_sources` is :func:`mmrag.loaders.discover` for a mix of local paths and object
URLs; :func:`download` copies one object for :func:`mmrag.indexing.steps.load_file`. See
:mod:`mmrag.sources.objects` for how objects stand in for files.

Example:
    >>> from mmrag.sources import discover_sources
    >>> for item in discover_sources(["s3://bucket/docs"], {"endpoint_url": "http://127.0.0.1:9000"}):  # doctest: +SKIP
    ...     print(item.doc_id)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmrag.loaders import DiscoveryProblem, FileRef, discover
from mmrag.sources.fetch import download
from mmrag.sources.objects import (
    ObjectRef,
    SourceAccessError,
    SourceNotFoundError,
    SourceUnreachableError,
    head_object,
    is_url,
    list_objects,
    normalize_url,
    object_stamp,
    ref_for,
    storage_options,
)

__all__ = [
    "ObjectRef",
    "SourceAccessError",
    "SourceNotFoundError",
    "SourceUnreachableError",
    "discover_sources",
    "head_object",
    "is_url",
    "list_objects",
    "download",
    "normalize_url",
    "object_stamp",
    "ref_for",
    "source_exists",
    "source_root",
    "storage_options",
]

#: What the default ``max_object_bytes`` is (MMRAG_SOURCE__MAX_OBJECT_MB's default).
MAX_OBJECT_BYTES = 200 * 1024 * 1024


def source_root(path: str | os.PathLike[str]) -> str:
    """The root an ingest argument is recorded under: a normalized URL, or an absolute path."""
    return normalize_url(str(path)) if is_url(path) else os.path.abspath(path)


def source_exists(source: str) -> bool:
    """Whether a document's source may still exist, asking no object store (a URL is taken to exist)."""
    return is_url(source) or os.path.exists(source)


def discover_sources(paths: Sequence[str | os.PathLike[str]], options: Mapping[str, Any] | None = None, *,
                     max_object_bytes: int = MAX_OBJECT_BYTES) -> Iterator[FileRef | ObjectRef | DiscoveryProblem]:
    """Walk local paths (:func:`~mmrag.loaders.discover`) and list object URLs (:func:`list_objects`), in order.

    Two sources that would share a doc id are reported, as :func:`~mmrag.loaders.discover` reports
    two files.

    Args:
        paths: files, folders and object URLs (``s3://bucket/prefix``).
        options: storage options for the URLs (:func:`storage_options`).
        max_object_bytes: objects larger than this are reported, not listed for loading.

    Raises:
        SourceNotFoundError, SourceAccessError, SourceUnreachableError: a URL's listing failed.
    """
    owner: dict[str, str] = {}
    # Local paths in one walk (it never walks a folder twice, whichever argument reaches it), then the URLs.
    local = [Path(p) for p in paths if not is_url(p)]
    walks: list[Iterator[Any]] = [discover(local)] if local else []
    walks += [list_objects(str(p), options or {}, max_bytes=max_object_bytes) for p in paths if is_url(p)]
    for walk in walks:
        for item in walk:
            if isinstance(item, (FileRef, ObjectRef)):
                held = owner.setdefault(item.doc_id, str(item.path))
                if held != str(item.path):
                    yield DiscoveryProblem(str(item.path), f"doc id {item.doc_id!r} is already used by {held}; "
                                                           "ingest a common parent instead")
                    continue
            yield item
