"""The access filter's query plan (issue 28, line 2): chosen by the caller's share, exact either way.

A caller who may read a large share of an index is answered by an unfiltered over-fetch, kept
to its documents and checked record by record (:mod:`mmrag.security.plan`); a small share, by the
store's ``where``. These tests run on real Chroma (embedded) and tantivy with documents ingested
through the real indexer (the hashing embedders stand in for the models: the plan never reads a
vector's meaning), and check that both plans return exactly what the filtered query returns, that
a relabel is seen by the next query, and that stored labels always have the last word.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from mmrag.config import Settings
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.security import plan
from mmrag.security.labels import Caller, access_where, label_changes
from mmrag.security.relabel import set_labels
from mmrag.types import Query
from tests.helpers.access import CALLERS, VOCAB, ingest_labelled, label_table

DOCS = 400


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return ingest_labelled(tmp_path_factory.mktemp("plan"), DOCS, 28)


def _run(kb: KnowledgeBase, which: str, caller: Caller, unlabelled: str, query: str, n: int,
         modality: str | None = None) -> tuple[list[Any], list[Any], bool]:
    """(planned hits, filtered hits, whether the planned call fell back to the filter)."""
    embedder, store = (kb.text, kb.text_store) if which == "text" else (kb.clip, kb.clip_store)
    vec = embedder.embed_texts([query])[0].tolist()
    where = access_where(caller, unlabelled)
    if modality:
        where = {"$and": [where, {"modality": modality}]}
    used = []

    def filtered() -> list[Any]:
        used.append(True)
        return store.query(vec, n, where)

    planned = plan.query_readable(kb, which, store, vec, n, caller, unlabelled, filtered, modality)
    return planned, store.query(vec, n, where), bool(used)


def test_both_plans_return_the_filtered_top_k(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded loop over callers, unlabelled modes, queries, k and the over-fetch cap (so both plans run)."""
    rng = random.Random(7)
    plans = {"over-fetch": 0, "filtered": 0}
    for _ in range(60):
        caller, unlabelled = rng.choice(CALLERS), rng.choice(["public", "private"])
        cap = rng.choice([plan.MAX_OVERFETCH, 50])  # 50: most small shares need more, and take the filter
        monkeypatch.setattr(plan, "MAX_OVERFETCH", cap)
        which = rng.choice(["text", "clip"])
        modality = rng.choice([None, "text"]) if which == "clip" else None
        n = rng.choice([1, 5, 10, 30])
        query = " ".join(rng.choices(VOCAB, k=2))
        planned, filtered, fell_back = _run(kb, which, caller, unlabelled, query, n, modality)
        plans["filtered" if fell_back else "over-fetch"] += 1
        assert [h.id for h in planned] == [h.id for h in filtered], (caller, unlabelled, which, n, cap)
        assert [h.score for h in planned] == pytest.approx([h.score for h in filtered], abs=1e-5)
        assert [h.metadata for h in planned] == [h.metadata for h in filtered]
        assert [h.text for h in planned] == [h.text for h in filtered]
    assert plans["over-fetch"] >= 20 and plans["filtered"] >= 5, plans


@pytest.mark.parametrize("retriever", ["clip", "text", "bm25", "hybrid"])
def test_searches_agree_with_the_filter_only_path(kb: KnowledgeBase, retriever: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the Searcher: the same hits (and documents) as with the over-fetch turned off."""
    rng = random.Random(retriever)
    cases = [(rng.choice(CALLERS), " ".join(rng.choices(VOCAB, k=2)), rng.choice([3, 10])) for _ in range(8)]
    chosen = [[h.id for h in Searcher(kb).as_caller(c).search(Query(text=q), k, retriever=retriever)]
              for c, q, k in cases]
    docs = [[h.doc_id for h in Searcher(kb).as_caller(c).search_documents(Query(text=q), k, retriever=retriever)]
            for c, q, k in cases]
    monkeypatch.setattr(plan, "MAX_OVERFETCH", 0)
    assert chosen == [[h.id for h in Searcher(kb).as_caller(c).search(Query(text=q), k, retriever=retriever)]
                      for c, q, k in cases]
    assert docs == [[h.doc_id for h in Searcher(kb).as_caller(c).search_documents(Query(text=q), k,
                                                                                 retriever=retriever)]
                    for c, q, k in cases]


def test_a_large_share_never_sends_the_label_filter_to_chroma(kb: KnowledgeBase,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of issue 28's line 2: Chroma scans every metadata row for a label ``where``; a caller of
    most of the corpus must not pay it (before the plan, every restricted query did)."""
    from mmrag.stores.chroma import ChromaStore

    sent: list[Any] = []
    real = ChromaStore.query

    def spy(self: ChromaStore, vector: Any, k: int, where: Any = None) -> Any:
        sent.append(where)
        return real(self, vector, k, where)

    monkeypatch.setattr(ChromaStore, "query", spy)
    hits = Searcher(kb).as_caller(Caller.of(["a"])).search(Query(text="harbour ledger"), 10, retriever="hybrid")
    assert len(hits) == 10
    assert not any("acl" in json.dumps(w) for w in sent if w), sent


def test_a_label_no_document_carries_answers_empty_without_an_index(kb: KnowledgeBase,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an index was asked for a caller who can read nothing")

    from mmrag.stores.chroma import ChromaStore
    from mmrag.stores.tantivy import TantivyKeywordIndex

    for cls, name in ((ChromaStore, "query"), (ChromaStore, "nearest"), (TantivyKeywordIndex, "query")):
        monkeypatch.setattr(cls, name, refuse)
    nobody = Searcher(kb, unlabelled="private").as_caller(Caller.of(["nobody"]))
    for retriever in ("clip", "text", "bm25", "hybrid"):
        assert nobody.search(Query(text="harbour"), 10, retriever=retriever) == []


def test_a_relabel_is_seen_by_the_next_query(tmp_path: Path) -> None:
    """Labels changed between two queries (by another KnowledgeBase object, as another process would):
    the next query follows them in both directions."""
    kb = ingest_labelled(tmp_path, 60, 3)
    other = KnowledgeBase(kb.data_dir, kb.collection, resolve_models(Settings()), clip=kb.clip, text=kb.text)
    moved = sorted(d for d, ls in label_table(kb).items() if ls == ("group:a",))[0]
    # Its own text as the query: the document ranks first for whoever may read it.
    query = Query(text=next(t for _, m, t in kb.text_store.records_of([moved], ("metadatas", "documents"))))

    def top(group: str, retriever: str) -> str:
        hits = Searcher(kb).as_caller(Caller.of([group])).search(query, 1, retriever=retriever)
        return hits[0].doc_id

    for retriever in ("text", "hybrid"):
        assert top("a", retriever) == moved and top("b", retriever) != moved
    set_labels(other, moved, ["group:b"])
    for retriever in ("text", "hybrid"):
        # The grant first: no stored record contradicts a stale cache here, only the stamp tells.
        assert top("b", retriever) == moved
        assert top("a", retriever) != moved
    set_labels(other, moved, ["group:a"])
    for retriever in ("text", "hybrid"):
        assert top("a", retriever) == moved
        assert top("b", retriever) != moved


def test_stored_labels_have_the_last_word(tmp_path: Path) -> None:
    """A relabel in flight (the stores already changed, the manifest not yet): the cache still says the
    caller may read the document; the over-fetch must not return it, and the answer stays exact."""
    kb = ingest_labelled(tmp_path, 60, 5)
    caller = Caller.of(["a"])
    vec = kb.text.embed_texts([" ".join(VOCAB)])[0].tolist()
    first = plan.query_readable(kb, "text", kb.text_store, vec, 5, caller, "public",
                                lambda: kb.text_store.query(vec, 5, access_where(caller)))
    revoked = next(h.doc_id for h in first if label_table(kb).get(h.doc_id) == ("group:a",))
    rows = list(kb.text_store.records_of([revoked]))
    kb.text_store.update_metadata([r for r, _, _ in rows], [label_changes(m, ["group:b"]) for _, m, _ in rows])
    # No LabelTable write: the manifest (and so the cache) still gives the document group:a.
    assert label_table(kb)[revoked] == ("group:a",)
    again = plan.query_readable(kb, "text", kb.text_store, vec, 5, caller, "public",
                                lambda: kb.text_store.query(vec, 5, access_where(caller)))
    assert revoked not in {h.doc_id for h in again}
    assert [h.id for h in again] == [h.id for h in kb.text_store.query(vec, 5, access_where(caller))]


def test_overfetch_depth() -> None:
    assert plan.overfetch_depth(100, 5_000, 10_000) == 300  # half the index: 100 / 0.5 * 1.5
    assert plan.overfetch_depth(100, 100, 10_000) == 10_000  # 1%: the whole index, still under the cap
    assert plan.overfetch_depth(100, 100, 100_000) is None  # 1% of 100k: the filter is cheaper
    assert plan.overfetch_depth(10, 0, 100) is None and plan.overfetch_depth(10, 5, 0) is None
