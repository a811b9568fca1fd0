"""Plain, immutable data passed between mmrag's layers.

Nothing here does I/O except :meth:`ImageAsset.read_bytes`, which reads the file an asset points to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

MetaValue = Union[str, int, float, bool]
Metadata = Mapping[str, MetaValue]
Modality = Literal["text", "image"]


@dataclass(frozen=True)
class TextBlock:
    """A run of extracted text: a whole file, or one PDF page / slide."""

    text: str
    page: int | None = None  # 1-based page or slide number; None for formats without pages
    #: Flat fields every chunk of this block carries into its records (``section``, ``content``,
    #: ``text_source``...). A ``section`` is also put before the text the text model embeds.
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class ImageAsset:
    """An image to embed: a file on disk, or bytes pulled out of a PDF, DOCX, PPTX or HTML file.

    Exactly one of ``data`` and ``path`` is set. Decoding is left to the embedding pipeline, which
    does it in parallel with the model and reports undecodable images as a failure of their document.
    """

    data: bytes | None = None
    path: str | None = None
    page: int | None = None  # 1-based page/slide of the parent document, when it has pages
    index: int = 0  # position among the parent document's images
    name: str | None = None  # the name inside the container (e.g. "image1.png"), if any

    def read_bytes(self) -> bytes:
        """Return the encoded image bytes."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError("ImageAsset has neither data nor path")
        return Path(self.path).read_bytes()


@dataclass(frozen=True)
class Document:
    """One loaded document, ready to chunk and embed.

    ``doc_id`` is the file's path relative to the ingested root (POSIX separators) or a JSONL
    record's id. ``source`` is the absolute path of the file it came from.
    """

    doc_id: str
    source: str
    doc_type: str  # txt, markdown, html, pdf, docx, pptx, image, jsonl
    content_hash: str
    texts: tuple[TextBlock, ...] = ()
    images: tuple[ImageAsset, ...] = ()
    metadata: Metadata = field(default_factory=dict)
    #: Loader counters summed into the ingest summary (e.g. ``ocr_pages``, ``ocr_seconds``); not stored.
    stats: Mapping[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text with its position: ``text == block_text[start:end]``."""

    doc_id: str
    text: str
    index: int  # position among the document's chunks
    page: int | None
    start: int  # character offsets into the page's (or file's) extracted text
    end: int
    metadata: Metadata = field(default_factory=dict)  # its block's metadata

    @property
    def embed_text(self) -> str:
        """What the text model embeds (see :func:`embedding_text`)."""
        return embedding_text(self.text, self.metadata)


def embedding_text(text: str, metadata: Mapping[str, Any]) -> str:
    """What the text model embeds for a chunk: its text, after its section path when it has one.

    A chunk deep in a section loses its heading ("Installation > Linux") to chunking; the path
    puts it back. A chunk that already starts with its section's own heading gets no prefix.

        >>> embedding_text("pip install mmrag", {"section": "Setup > Linux"})
        'Setup > Linux\\npip install mmrag'
        >>> embedding_text("# Linux\\n\\npip install", {"section": "Setup > Linux"})
        '# Linux\\n\\npip install'
    """
    section = metadata.get("section")
    if not section:
        return text
    heading = str(section).rsplit(" > ", 1)[-1].strip()
    if text.lstrip("#* \t\n").startswith(heading):
        return text
    return f"{section}\n{text}"


def record_id(doc_id: str, kind: str, index: int) -> str:
    """The id of a document's record: ``doc#t3`` for its 4th text chunk, ``doc#i0`` for its 1st image."""
    return f"{doc_id}#{kind}{index}"


def doc_id_of(rid: str) -> str | None:
    """The document of a record id made by :func:`record_id` (None for an id mmrag did not make)."""
    doc_id, sep, _ = rid.rpartition("#")
    return doc_id if sep else None


def is_image_id(rid: str) -> bool:
    """Whether a record id names an image record (``#i``), which the split store keeps in its image half."""
    return "#i" in rid


@dataclass(frozen=True)
class Record:
    """What a vector store holds: an id, a vector, the text (if any) and flat metadata.

    ``embedding`` is any sequence of floats: a list, or a row of a float32 numpy matrix (what the
    ingest writer passes, so a batch's vectors are never turned into Python floats).
    """

    id: str
    embedding: Sequence[float]
    metadata: Metadata
    document: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    doc_id: str
    source: str
    modality: Modality
    score: float  # cosine similarity for vector indexes, BM25 score for the keyword index
    page: int | None = None
    text: str | None = None
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    """A search request: text, an image, or both."""

    text: str | None = None
    image: ImageAsset | None = None


@dataclass(frozen=True)
class RecordBatch:
    """Records of one collection as columns: what a snapshot writes and a restore reads back."""

    ids: list[str]
    vectors: Any  # a float32 numpy array, shape (len(ids), dim)
    metadatas: list[dict[str, Any] | None]
    documents: list[str | None]
