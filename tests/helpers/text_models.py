"""Fake text models for unit tests of the answer path (never on a product path)."""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np


class BagOfWords:
    """A fake text model whose cosine grows with shared words (so the extractor has something to rank)."""

    name = "bag-of-words"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[i, zlib.crc32(word.encode()) % 256] += 1.0  # not hash(): salted per process
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
