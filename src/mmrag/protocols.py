"""The interfaces services depend on. Implementations: embedders/, stores/ (fakes included)."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from mmrag.errors import LoadError
from mmrag.types import Hit, ImageAsset, Record


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


@runtime_checkable
class VectorStore(Protocol):
    """Holds records of one embedder; refuses another embedder's identity."""

    def upsert(self, records: Sequence[Record]) -> None: ...

    def query(self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None) -> list[Hit]: ...

    def delete_docs(self, doc_ids: Sequence[str]) -> None: ...

    def count(self) -> int: ...
