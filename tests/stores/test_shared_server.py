"""Issue 8: two data dirs (or hosts) on one Chroma server never delete each other's records."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import ForeignCollectionError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.types import Query
from tests.conftest import SAMPLE_CORPUS


def _kb(data_dir: Path, name: str, url: str) -> KnowledgeBase:
    return KnowledgeBase(data_dir, name, resolve_models(Settings()), store_url=url, clip=HashingEmbedder(16),
                         text=HashingEmbedder(8))


def test_a_second_data_dir_cannot_write_or_repair_away_the_owners_records(tmp_path: Path, shared_chroma_server: str) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    owner = _kb(tmp_path / "host-a", name, shared_chroma_server)
    Indexer(owner).ingest([corpus])
    before = owner.bare_store("clip").count(), owner.bare_store("text").count()
    assert before[0] > 0

    other = _kb(tmp_path / "host-b", name, shared_chroma_server)  # its manifest knows nothing
    with pytest.raises(ForeignCollectionError, match="belongs to another mmrag data dir"):
        Indexer(other).ingest([corpus])  # its repair would have deleted every record as an orphan
    with pytest.raises(ForeignCollectionError):
        other.drop()
    assert (owner.bare_store("clip").count(), owner.bare_store("text").count()) == before
    assert Indexer(owner).ingest([corpus]).unchanged == 8  # the owner carries on as before
    assert owner.bare_store("clip").owner == owner.owner_id != other.owner_id


def test_finding10_a_delete_by_another_process_is_seen_by_a_running_searcher(tmp_path: Path,
                                                                              shared_chroma_server: str) -> None:
    """`mmrag delete` beside `mmrag serve` on one data dir and Chroma server: the server's next search
    no longer returns the document (it returned its stale BM25 rows, with empty metadata, before)."""
    name = f"stale-{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    server_side = _kb(tmp_path / "data", name, shared_chroma_server)
    Indexer(server_side).ingest([corpus])
    searcher = Searcher(server_side)
    q = Query(text="When does the building close on weekdays?")
    for retriever in ("bm25", "hybrid"):
        assert searcher.search(q, 3, retriever=retriever)[0].doc_id == "visitor-faq.html"
    cli_side = _kb(tmp_path / "data", name, shared_chroma_server)  # what a second process opens
    assert Indexer(cli_side).delete(["visitor-faq.html"]) == 1
    for retriever in ("bm25", "hybrid", "text"):
        hits = searcher.search(q, 5, retriever=retriever)
        assert hits and all(h.doc_id != "visitor-faq.html" for h in hits), retriever
        assert all(h.metadata.get("doc_id") == h.doc_id and h.source for h in hits), retriever
