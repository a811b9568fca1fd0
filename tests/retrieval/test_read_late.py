"""Hybrid search reads only the records it returns: the vector indexes answer with ids and scores,
the fusion ranks them, and only the fused top k are read (with a restricted caller's stored labels
checked on each). Real Chroma and tantivy, documents through the real indexer; the hashing
embedders stand in for the models (the reads never depend on a vector's meaning).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from mmrag.kb import KnowledgeBase
from mmrag.retrieval import Searcher, SearchFilter
from mmrag.security.labels import Caller, label_changes
from mmrag.types import Query
from tests.helpers.access import CALLERS, VOCAB, ingest_labelled, label_table


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return ingest_labelled(tmp_path_factory.mktemp("late"), 300, 11)


def _eager(searcher: Searcher, query: Query, k: int, **kw: Any) -> list[Any]:
    """The same search with every index read in full (the path before late reads)."""
    plan = searcher._plan(kw.pop("where", None), kw.pop("filters", None))
    return searcher._hybrid(query, k, kw.pop("modality", "all"), plan, kw.pop("dedupe", False), read_late=False)


def _queries(n: int) -> list[Query]:
    rng = random.Random(3)
    return [Query(text=" ".join(rng.choices(VOCAB, k=rng.randint(1, 4)))) for _ in range(n)]


@pytest.mark.parametrize("caller", [None, *CALLERS], ids=lambda c: "all" if c is None else repr(c.labels))
@pytest.mark.parametrize("dedupe", [False, True])
def test_late_reads_return_what_full_reads_return(kb: KnowledgeBase, caller: Caller | None, dedupe: bool) -> None:
    searcher = Searcher(kb, depth=40).as_caller(caller)
    for query in _queries(15):
        for k in (1, 5, 12):
            late = searcher.search(query, k, retriever="hybrid", dedupe=dedupe)
            full = _eager(searcher, query, k, dedupe=dedupe)
            assert [(h.id, h.score, h.doc_id, h.source, h.text, h.metadata, h.modality) for h in late] == \
                   [(h.id, h.score, h.doc_id, h.source, h.text, h.metadata, h.modality) for h in full], (query, k)


def test_only_the_fused_top_k_are_read(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrag.stores.chroma import ChromaStore

    read: list[int] = []
    queried: list[bool] = []
    get, query = ChromaStore.get, ChromaStore.query
    monkeypatch.setattr(ChromaStore, "get", lambda self, ids: read.append(len(ids)) or get(self, ids))
    monkeypatch.setattr(ChromaStore, "query", lambda self, *a, **kw: queried.append(True) or query(self, *a, **kw))
    for caller in (None, Caller.of(["a"])):
        read.clear()
        hits = Searcher(kb, depth=40).as_caller(caller).search(Query(text="harbour ledger"), 5, retriever="hybrid")
        assert len(hits) == 5 and all(h.metadata.get("doc_id") and h.text for h in hits)
        assert 0 < sum(read) <= 5, read  # at most the 5 kept (a BM25 hit is already whole); never the 40-deep lists
    assert not queried  # no full read query on either vector index


def test_a_filter_still_reads_in_full(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrag.stores.chroma import ChromaStore

    queried: list[bool] = []
    query = ChromaStore.query
    monkeypatch.setattr(ChromaStore, "query", lambda self, *a, **kw: queried.append(True) or query(self, *a, **kw))
    hits = Searcher(kb).search(Query(text="harbour"), 5, retriever="hybrid", filters=SearchFilter(doc_type="jsonl"))
    assert hits and queried  # a user's filter is the store's to apply, before its top k


def test_a_relabel_in_flight_between_the_two_reads_falls_back_to_full_reads(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The vector stores already refuse the caller, the manifest (and so the label cache) not yet:
    the late read sees the stored labels, and the search is answered by full reads instead."""
    kb = ingest_labelled(tmp_path, 60, 5)
    caller = Caller.of(["a"])
    searcher = Searcher(kb, depth=20).as_caller(caller)
    query = Query(text=" ".join(VOCAB))
    first = searcher.search(query, 5, retriever="hybrid")
    revoked = next(h.doc_id for h in first if label_table(kb).get(h.doc_id) == ("group:a",))
    for store in (kb.text_store, kb.clip_store):
        rows = list(store.records_of([revoked]))
        store.update_metadata([r for r, _, _ in rows], [label_changes(m, ["group:b"]) for _, m, _ in rows])
    assert label_table(kb)[revoked] == ("group:a",)  # the manifest has not caught up
    full_reads: list[bool] = []
    hybrid = Searcher._hybrid

    def spy(self: Searcher, *args: Any, read_late: bool = True) -> Any:
        full_reads.append(not read_late)
        return hybrid(self, *args, read_late=read_late)

    monkeypatch.setattr(Searcher, "_hybrid", spy)
    again = searcher.search(query, 5, retriever="hybrid")
    assert full_reads == [False, True]  # the late read refused, then the full reads answered
    assert [h.id for h in again] == [h.id for h in _eager(searcher, query, 5)]


def test_a_record_deleted_between_the_two_reads_is_not_half_returned(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrag.stores.chroma import ChromaStore

    kb = ingest_labelled(tmp_path, 60, 6)
    searcher = Searcher(kb, depth=20)
    query = Query(text=" ".join(VOCAB[:3]))
    gone = searcher.search(query, 3, retriever="hybrid")[0].id
    get = ChromaStore.get
    # The record vanishes after the ids were taken, before the kept ones are read.
    monkeypatch.setattr(ChromaStore, "get", lambda self, ids: [h for h in get(self, ids) if h.id != gone])
    hits = searcher.search(query, 3, retriever="hybrid")
    assert len(hits) == 3 and all(h.metadata.get("doc_id") and h.source for h in hits)
