"""Services depend on the store protocols; backends come from registry.py's name -> factory dicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import ConfigError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.protocols import KeywordIndex, VectorStore
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.types import Query
from tests.conftest import SAMPLE_CORPUS


def _kb(tmp_path: Path, backend: str) -> KnowledgeBase:
    return KnowledgeBase(tmp_path / backend, "kb", resolve_models(Settings()), clip=HashingEmbedder(16),
                         text=HashingEmbedder(8), vector_store=backend)


def test_the_services_run_unchanged_on_every_vector_store(tmp_path: Path) -> None:
    results = {}
    for backend in ("chroma", "memory"):
        kb = _kb(tmp_path, backend)
        summary = Indexer(kb).ingest([SAMPLE_CORPUS])
        assert summary.indexed == 8 and kb.health().problems == []
        assert isinstance(kb.clip_store, VectorStore) and isinstance(kb.keyword, KeywordIndex)
        Indexer(kb).delete(["visitor-faq.html"])
        results[backend] = (kb.manifest.totals("kb"), kb.bare_store("clip").count(), kb.keyword.count(),
                            [h.doc_id for h in Searcher(kb).search(Query(text="first-aid kit"), 3, retriever="bm25")])
    assert results["memory"] == results["chroma"]


def test_an_unknown_backend_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Known: chroma, memory"):
        _kb(tmp_path, "qdrant")
