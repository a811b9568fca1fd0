"""HashingEmbedder: a deterministic fake for unit tests. Never a default, never a fallback."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from mmrag.types import ImageAsset


class HashingEmbedder:
    """Maps each text (or image's bytes) to a unit vector seeded by its sha256 (chroma's hashing EF)."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.name = f"hashing:{dim}"
        self.precision = "fp32"

    def identity(self) -> dict[str, str | int]:
        """Identity stored with collections built by this fake."""
        return {"embedder": "hashing", "model": "hashing", "dim": self.dim, "preprocess": "-", "precision": "fp32"}

    def _vec(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Hash each text to a vector."""
        return np.stack([self._vec(t.encode()) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_images(self, assets: Sequence[ImageAsset]) -> np.ndarray:
        """Hash each image's bytes to a vector."""
        return np.stack([self._vec(a.read_bytes()) for a in assets]) if assets else np.zeros((0, self.dim), np.float32)

    def iter_image_embeddings(self, assets: Sequence[ImageAsset], labels: Sequence[str] | None = None):  # type: ignore[no-untyped-def]
        """Like :meth:`OpenClipEmbedder.iter_image_embeddings`, with a real decode check."""
        from mmrag.embedders.openclip import decode_image
        from mmrag.errors import LoadError

        for i, asset in enumerate(assets):
            label = labels[i] if labels else (asset.path or f"image#{i}")
            try:
                data = asset.read_bytes()
                decode_image(data, label=label)
            except LoadError as exc:
                yield i, exc
                continue
            yield i, self._vec(data)
