"""The interfaces services depend on. Implementations: embedders/, stores/, rerankers/ (fakes included)."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from mmrag.errors import LoadError
from mmrag.types import Hit, ImageAsset, Record, RecordBatch


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors; ``identity()`` is stored with the collection it fills.

    Example:
        >>> from mmrag.embedders.hashing import HashingEmbedder
        >>> HashingEmbedder(8).embed_texts(["hello"]).shape
        (1, 8)
    """

    name: str
    dim: int

    def identity(self) -> dict[str, str | int]: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageEmbedder(Embedder, Protocol):
    """An embedder of a joint text/image space."""

    def embed_images(self, assets: Sequence[ImageAsset]) -> np.ndarray: ...

    def iter_image_embeddings(
        self, assets: Sequence[ImageAsset], labels: Sequence[str] | None = None
    ) -> Iterator[tuple[int, np.ndarray | LoadError]]: ...


#: One stored record as the stores yield it: ``(id, metadata, document)``.
Row = tuple[str, dict[str, Any], str | None]


@runtime_checkable
class VectorStore(Protocol):
    """Holds records of one embedder; refuses another embedder's identity.

    These are the calls the services make (``indexing``, ``kb``, ``retrieval``, the HTTP routes).
    Implementations: :class:`~mmrag.stores.chroma.ChromaStore` (the product),
    :class:`~mmrag.stores.split.ModalitySplitStore` (the CLIP space over a text and an image
    collection) and :class:`~mmrag.stores.memory.InMemoryStore` (a test fake);
    ``tests/stores/test_vector_store_contract.py`` holds them all to the same behaviour. ``where`` has
    Chroma's filter semantics in every implementation.

    Example:
        >>> from mmrag.stores.memory import InMemoryStore
        >>> from mmrag.types import Record
        >>> store = InMemoryStore("demo")
        >>> store.upsert([Record("a#t0", [1.0, 0.0], {"doc_id": "a", "page": 1}, "hello")])
        >>> [h.doc_id for h in store.query([1.0, 0.0], k=5, where={"page": 1})]
        ['a']
        >>> isinstance(store, VectorStore)
        True
    """

    name: str
    #: The embedder identity recorded with the collection (empty when none is).
    identity: dict[str, Any]

    def check_writable(self) -> None:
        """Raise :class:`~mmrag.errors.ForeignCollectionError` if this data dir may not write here."""
        ...

    def upsert(self, records: Sequence[Record], *, fresh: bool = False) -> None:
        """Insert or replace records by id (writing the same records twice changes nothing).

        ``fresh=True`` promises the ids were just deleted, so a backend may skip existence checks.
        """
        ...

    def query(self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """The ``k`` nearest records passing ``where``, nearest first; ``score`` is cosine similarity."""
        ...

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """The records with these ids (missing ones left out), ``score`` 0."""
        ...

    def update_metadata(self, ids: Sequence[str], changes: Sequence[Mapping[str, Any]]) -> None:
        """Merge ``changes[i]`` into record ``ids[i]``'s metadata (a ``None`` value deletes the key).

        Vectors and text stay as they are: relabelling a document is this call, not a re-embed.
        """
        ...

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        """Delete every record whose ``doc_id`` metadata is one of ``doc_ids``."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Delete records by id."""
        ...

    def count(self) -> int:
        """Number of records."""
        ...

    def records_of(self, doc_ids: Sequence[str], include: Sequence[str] = ("metadatas",)) -> Iterator[Row]:
        """Every record of these documents; metadata/document filled only when ``include`` names them."""
        ...

    def iter_all(self, include: Sequence[str] = ("metadatas",)) -> Iterator[Row]:
        """Every record (a full scan: repairs, rebuilds and tests only)."""
        ...

    def iter_batches(self, size: int = 5000) -> Iterator[RecordBatch]:
        """Every record with its vector, ``size`` at a time (snapshots; the caller holds the writer lock)."""
        ...

    def upsert_batch(self, batch: RecordBatch) -> None:
        """Write a batch exactly as it is: ids, vectors, metadata and documents (restores)."""
        ...

    def parts(self) -> Sequence["VectorStore"]:
        """The physical collections this store writes, each with its own ``name``: itself, or the
        halves of a store spread over several (``doctor`` checks and repairs each one)."""
        ...


@runtime_checkable
class KeywordIndex(Protocol):
    """BM25 rows of one collection's text records, kept beside the text store.

    Implementation: :class:`~mmrag.stores.tantivy.TantivyKeywordIndex` (checked by
    ``tests/stores/test_keyword_index_contract.py``). Writers hold the collection's writer lock; a write
    is visible to readers in every process once it returns.

    Example:
        >>> from pathlib import Path
        >>> from mmrag.stores.tantivy import TantivyKeywordIndex
        >>> from mmrag.types import Record
        >>> index = TantivyKeywordIndex(Path(tmp) / "kw")  # doctest: +SKIP
        >>> index.write(records=[Record("a#t0", (), {"doc_id": "a", "source": "/c/a.txt"}, "red lanterns")])  # doctest: +SKIP
        >>> [h.doc_id for h in index.query("lantern", 5, source_prefix="/c/")]  # doctest: +SKIP
        ['a']
    """

    def write(self, delete_docs: Sequence[str] = (), records: Sequence[Record] = ()) -> None:
        """Delete every row of ``delete_docs``, then add ``records``, atomically."""
        ...

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        """Delete every row of these documents."""
        ...

    def clear(self) -> None:
        """Delete every row."""
        ...

    def count(self) -> int:
        """Number of rows."""
        ...

    def doc_counts(self) -> dict[str, int]:
        """Rows per document id."""
        ...

    def rows(self) -> Iterator[tuple[str, dict[str, Any], str]]:
        """Every row as ``(id, metadata, text)``, ordered by id."""
        ...

    def query(self, text: str, k: int, *, where: Mapping[str, Any] | None = None,
              source_prefix: str | None = None) -> list[Hit]:
        """Top ``k`` rows by BM25 that pass ``where`` (Chroma semantics) and ``source_prefix``."""
        ...


@runtime_checkable
class Reranker(Protocol):
    """Scores passages against a query by reading the two together (a cross-encoder, or a hosted API).

    ``name`` identifies the backend and its weights (``offline``, ``cross-encoder:<name or folder>``,
    ``litellm:<provider>/<model>``). Implementations: :mod:`mmrag.rerankers` (``offline`` is
    :mod:`mmrag.rerankers.sentences`); :func:`mmrag.registry.build_reranker` builds one from such a
    name. A reranker may be called from several threads at once (the server shares one). One whose
    ``fuses_first_stage`` is True has its order fused with the first stage's (:mod:`mmrag.rerank`).

    Example:
        >>> from mmrag.registry import build_reranker
        >>> reranker = build_reranker("cross-encoder:/models/my-cross-encoder")  # doctest: +SKIP
        >>> reranker.score("when does the museum open?", ["Opens at 9.", "Parking is free."])  # doctest: +SKIP
        [0.91, 0.02]
    """

    name: str

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage, in the passages' order; higher is more relevant."""
        ...
