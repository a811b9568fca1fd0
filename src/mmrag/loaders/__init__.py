"""Turning files into :class:`~mmrag.types.Document` objects.

:func:`discover` walks the paths to ingest and yields :class:`FileRef` objects (and
:class:`DiscoveryProblem` objects for what cannot be ingested); :func:`load` reads one file
into documents, choosing the loader by suffix, and :func:`load_iter` streams them, reporting a
JSONL file's bad lines as :class:`RecordProblem` objects instead of failing the file. Every
failure is a :class:`~mmrag.errors.LoadError` with a reason a person can act on; no parser
exception gets out.

Example:
    >>> from pathlib import Path
    >>> from mmrag.loaders import FileRef, discover, file_sha256, load
    >>> for item in discover([Path("docs")]):  # doctest: +SKIP
    ...     if isinstance(item, FileRef):
    ...         documents = load(item, content_hash=file_sha256(item.path))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from mmrag.errors import LoadError
from mmrag.loaders._common import (
    DOC_TYPES,
    SUPPORTED_SUFFIXES,
    FileRef,
    JsonlFields,
    LoaderLimits,
    RecordProblem,
    image_shape_problem,
    mb,
    translating,
)
from mmrag.loaders.discovery import DiscoveryProblem, discover, file_sha256
from mmrag.loaders.image import load_image
from mmrag.loaders.jsonl import iter_jsonl, load_jsonl
from mmrag.loaders.office import load_docx, load_pptx
from mmrag.loaders.pdf import load_pdf
from mmrag.loaders.text import load_html, load_text
from mmrag.types import Document

__all__ = [
    "SUPPORTED_SUFFIXES",
    "DiscoveryProblem",
    "FileRef",
    "JsonlFields",
    "LoaderLimits",
    "RecordProblem",
    "discover",
    "file_sha256",
    "image_shape_problem",
    "load",
    "load_iter",
]

_FileLoader = Callable[..., Document]

_LOADERS: dict[str, tuple[_FileLoader, str]] = {
    "txt": (load_text, "text file"),
    "markdown": (load_text, "Markdown file"),
    "html": (load_html, "HTML file"),
    "pdf": (load_pdf, "PDF"),
    "docx": (load_docx, "DOCX file"),
    "pptx": (load_pptx, "PPTX file"),
    "image": (load_image, "image"),
}


def _check_file(ref: FileRef, limits: LoaderLimits) -> str:
    """The checks every format shares, before the file is opened. Returns its ``doc_type``."""
    path = str(ref.path)
    doc_type = DOC_TYPES.get(ref.suffix)
    if doc_type is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise LoadError(path, f"unsupported file type '{ref.suffix}'; supported: {supported}")
    try:
        size = os.stat(ref.path).st_size
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if size > limits.max_file_bytes:
        raise LoadError(path, f"file is {mb(size)}, over the {mb(limits.max_file_bytes)} limit (--max-file-mb)")
    if size == 0:
        reason = "empty file: no text to index" if doc_type in ("txt", "markdown", "html") else "empty file (0 bytes)"
        raise LoadError(path, reason, skipped=True)
    return doc_type


def load(
    ref: FileRef,
    *,
    content_hash: str,
    jsonl: JsonlFields = JsonlFields(),  # noqa: B008 - frozen, so sharing the default is safe
    limits: LoaderLimits = LoaderLimits(),  # noqa: B008
) -> list[Document]:
    """Load one file into documents, choosing the loader by the file's suffix.

    A JSONL file fails as a whole at its first bad line, as it always has; :func:`load_iter`
    loads its good records and reports the bad lines instead.

    Args:
        ref: The file, usually from :func:`discover` (or :meth:`FileRef.from_path`).
        content_hash: The file's hash (:func:`file_sha256`), stored on the document so an
            unchanged file can be skipped on re-ingest. JSONL records get their own hash instead.
        jsonl: Field names for ``.jsonl`` files.
        limits: Resource limits.

    Returns:
        One document per file, or one per record for JSONL.

    Raises:
        LoadError: If the file cannot be loaded. ``skipped`` is ``True`` when the file is fine
            but has nothing to index (empty, whitespace only, a PDF with no text and no images).
            :class:`~mmrag.errors.BudgetExceededError`, a ``LoadError``, when the document goes
            over one of ``limits``' budgets (pages, images, OCR seconds, load seconds).
    """
    path = str(ref.path)
    doc_type = _check_file(ref, limits)
    if doc_type == "jsonl":
        with translating(path, "JSONL file"):
            return load_jsonl(ref, fields=jsonl, limits=limits)
    loader, what = _LOADERS[doc_type]
    # Loaders translate what they expect; this catches whatever a parser raises unexpectedly.
    with translating(path, what):
        return [loader(ref, content_hash=content_hash, limits=limits)]


def load_iter(
    ref: FileRef,
    *,
    content_hash: str,
    jsonl: JsonlFields = JsonlFields(),  # noqa: B008 - frozen, so sharing the default is safe
    limits: LoaderLimits = LoaderLimits(),  # noqa: B008
) -> Iterator[Document | RecordProblem]:
    """Load one file as a stream of documents, reporting a JSONL file's bad lines one by one.

    For a JSONL file the records are read a line at a time and each is yielded as soon as it
    is parsed, so a corpus of any size takes the memory of one record; a bad line (invalid
    JSON or UTF-8, no id, a field of the wrong type, text over the limit, an id used earlier in
    the file) is yielded as a :class:`RecordProblem` and the rest of the file still loads. Any
    other file yields the documents :func:`load` returns. Nothing is read until iteration
    starts, and the errors below are raised from the iteration.

    Args:
        ref: The file, usually from :func:`discover`.
        content_hash: The file's hash (:func:`file_sha256`); JSONL records get their own hash,
            the same as :func:`load` gives them.
        jsonl: Field names for ``.jsonl`` files.
        limits: Resource limits; ``max_text_chars`` applies to each JSONL record.

    Yields:
        Documents, and for JSONL :class:`RecordProblem` objects, in file order.

    Raises:
        LoadError: If the file fails as a whole, as for :func:`load`; for JSONL, when no record
            could be loaded because of bad lines (nothing is yielded first), or with
            ``skipped=True`` when it has no records with text.

    Example:
        >>> for item in load_iter(ref, content_hash=file_sha256(ref.path)):  # doctest: +SKIP
        ...     if isinstance(item, RecordProblem):
        ...         print(f"{item.source}:{item.line}: {item.reason}")
    """
    path = str(ref.path)
    if _check_file(ref, limits) != "jsonl":
        yield from load(ref, content_hash=content_hash, jsonl=jsonl, limits=limits)
        return
    with translating(path, "JSONL file"):
        yield from iter_jsonl(ref, fields=jsonl, limits=limits)
