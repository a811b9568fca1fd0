"""Every VectorStore implementation, built fresh per test.

The fake, embedded Chroma, a ``chroma run`` server, and :class:`ModalitySplitStore` (the CLIP
space as a text and an image collection) over the fake and over embedded Chroma.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.stores.cases import DIM

IDENTITY = {"embedder": "hashing", "model": "hashing", "dim": DIM, "preprocess": "-", "precision": "fp32"}


class StoreFactory:
    """Builds empty stores of one implementation: ``make(identity=..., foreign=False, name=None)``.

    ``kind`` names the implementation; ``persistent`` says whether ``name=`` reopens a store.
    """

    def __init__(self, kind: str, client: Any = None) -> None:
        self.kind = kind
        self.persistent = client is not None and not kind.startswith("split")
        self._client = client

    def __call__(self, identity: dict[str, Any] | None = IDENTITY, foreign: bool = False,
                 name: str | None = None) -> Any:
        from mmrag.stores.split import ModalitySplitStore

        if self.kind.startswith("split"):
            name = name or f"contract-{uuid.uuid4().hex[:12]}"
            return ModalitySplitStore(self._one(f"{name}-clip", identity, foreign),
                                      self._one(f"{name}-image", identity, foreign))
        return self._one(name, identity, foreign)

    def _one(self, name: str | None, identity: dict[str, Any] | None, foreign: bool) -> Any:
        if self._client is None:
            from mmrag.stores.memory import InMemoryStore

            return InMemoryStore(name or "contract", identity, foreign=foreign)
        from mmrag.stores.chroma import ChromaStore

        name = name or f"contract-{uuid.uuid4().hex[:12]}"  # a shared server keeps every test's collections
        if foreign:
            ChromaStore(self._client, name, identity, owner="another-data-dir")  # the owner creates it first
        return ChromaStore(self._client, name, identity, owner="this-data-dir")


@pytest.fixture(params=[
    "memory",
    "chroma-embedded",
    pytest.param("chroma-server", marks=pytest.mark.slow),
    "split-memory",
    "split-chroma",
])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of empty stores of one implementation (the test runs once per implementation)."""
    from mmrag.stores.chroma import open_client

    if request.param in ("memory", "split-memory"):
        return StoreFactory(request.param)
    if request.param in ("chroma-embedded", "split-chroma"):
        return StoreFactory(request.param, open_client(tmp_path))
    try:
        url = request.getfixturevalue("shared_chroma_server")
    except pytest.fail.Exception as exc:  # conftest fails when the server never answers
        pytest.skip(f"`chroma run` did not start, so the server case cannot run: {exc}")
    return StoreFactory("chroma-server", open_client(tmp_path, url))


@pytest.fixture
def store(make_store: StoreFactory) -> Any:
    """An empty store of one implementation."""
    return make_store()
