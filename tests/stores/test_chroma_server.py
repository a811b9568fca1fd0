"""The same ingestion against a real `chroma run` server on loopback (--store-url)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import StoreError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.types import Query
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_ingest_and_search_through_a_chroma_server(chroma_server: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The server keeps the vectors.\n")
    (corpus / "b.txt").write_text("Bananas are yellow.\n")
    kb = KnowledgeBase(tmp_path / "kb", "srv", resolve_models(Settings()), store_url=chroma_server,
                       clip=HashingEmbedder(16), text=HashingEmbedder(8))
    assert Indexer(kb).ingest([corpus]).indexed == 2
    assert kb.bare_store("clip").count() == 2 and kb.bare_store("text").count() == 2
    assert Searcher(kb).search(Query(text="bananas yellow"), 1, retriever="bm25")[0].doc_id == "b.txt"
    assert not (tmp_path / "kb" / "chroma").exists(), "nothing went to the embedded store"


def test_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb", "srv", resolve_models(Settings()), store_url=f"http://127.0.0.1:{free_port()}",
                       clip=HashingEmbedder(16), text=HashingEmbedder(8))
    with pytest.raises(StoreError, match="Chroma failed"):
        kb.bare_store("clip").count()
