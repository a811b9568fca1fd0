"""Invariants of a knowledge base against a plain model of what it should hold (chroma's pattern).

Each function takes the :class:`~mmrag.kb.KnowledgeBase` and the model's view, and raises an
``AssertionError`` naming what disagrees.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mmrag.retrieval import Searcher
from mmrag.types import Query, embedding_text

KEPT = "; the previously indexed version is kept"


@dataclass(frozen=True)
class Expected:
    """What the model says one document's manifest row and records are.

    Attributes:
        source: the file it came from.
        status: ``done`` or ``failed``.
        text: the text whose chunks are indexed (``None``: no records).
        marker: the marker word of that text.
        kept: a failed row that still holds an earlier good version.
    """

    source: str
    status: str
    text: str | None = None
    marker: str | None = None
    kept: bool = False


def manifest_matches_model(kb: Any, docs: Mapping[str, Expected]) -> None:
    """Rows are exactly the model's documents, with their status, source and record counts."""
    rows = {s.doc_id: s for s in kb.manifest.all(kb.collection)}
    assert sorted(rows) == sorted(docs), f"manifest holds {sorted(rows)}, the model {sorted(docs)}"
    for doc_id, want in docs.items():
        row = rows[doc_id]
        assert (row.status, row.source) == (want.status, want.source), (doc_id, row, want)
        if want.text is None:
            assert (row.n_clip, row.n_text) == (0, 0), (doc_id, row)
        else:  # text only: one clip and one text record per chunk
            assert row.n_clip == row.n_text > 0, (doc_id, row)
        if want.status == "done":
            assert row.reason == "", (doc_id, row.reason)
        else:
            assert row.reason and row.reason.endswith(KEPT) == want.kept, (doc_id, row.reason, want.kept)


def stores_match_manifest(kb: Any) -> None:
    """Per document, both Chroma collections hold n_clip/n_text records; no orphans; nothing pending."""
    rows = {s.doc_id: s for s in kb.manifest.all(kb.collection)}
    assert not [d for d, s in rows.items() if s.status == "pending"], "a document was left pending"
    for which, attr in (("clip", "n_clip"), ("text", "n_text")):
        store = kb.bare_store(which)
        counts = Counter(str(meta.get("doc_id")) for _, meta, _ in store.iter_all())
        orphans = sorted(set(counts) - set(rows))
        assert not orphans, f"{which} store holds records of documents the manifest does not know: {orphans}"
        want = {d: getattr(s, attr) for d, s in rows.items() if getattr(s, attr)}
        assert dict(counts) == want, f"{which} store per document {dict(counts)} != manifest {want}"
        assert store.count() == sum(want.values())


def keyword_matches_manifest(kb: Any) -> None:
    """The keyword index holds n_text rows per document, and the text store's chunks verbatim."""
    rows = {s.doc_id: s for s in kb.manifest.all(kb.collection)}
    want = {d: s.n_text for d, s in rows.items() if s.n_text}
    assert kb.keyword.doc_counts() == want
    assert kb.keyword.count() == sum(want.values())
    chroma = sorted((rid, doc) for rid, _, doc in kb.bare_store("text").iter_all(include=("documents",)))
    assert sorted((rid, text) for rid, _, text in kb.keyword.rows()) == chroma


def records_hold_the_indexed_text(kb: Any, docs: Mapping[str, Expected]) -> None:
    """Each document's chunks are ``#t0..#tN`` slices of the model's text, covering it from start to end.

    So an old version's records cannot pass for the new one, nor a kept version be lost.
    """
    live = {d: e for d, e in docs.items() if e.text is not None}
    for which in ("clip", "text"):
        store = kb.bare_store(which)
        by_doc: dict[str, list[tuple[int, dict[str, Any], str]]] = {}
        for rid, meta, text in store.records_of(sorted(live), include=("metadatas", "documents")):
            by_doc.setdefault(str(meta["doc_id"]), []).append((int(meta["chunk"]), meta, text or ""))
        for doc_id, want in live.items():
            chunks = sorted(by_doc.get(doc_id, []), key=lambda c: c[0])
            assert [c[0] for c in chunks] == list(range(len(chunks))) and chunks, (which, doc_id, [c[0] for c in chunks])
            assert want.text is not None
            for _, meta, text in chunks:
                assert want.text[meta["start"]:meta["end"]] == text, (which, doc_id, meta)
                assert meta["source"] == want.source
            assert want.text.startswith(chunks[0][2]) and want.text.rstrip().endswith(chunks[-1][2].rstrip()), doc_id


def records_find_themselves(kb: Any, docs: Mapping[str, Expected]) -> None:
    """Each document's first chunk is the nearest record to its own vector in both collections.

    Counting records alone would miss a vector index that lost entries (what a killed write
    could leave): Chroma then answers from what is left.
    """
    live = sorted(d for d, e in docs.items() if e.text is not None)
    for which, embedder in (("clip", kb.clip), ("text", kb.text)):
        store = kb.bare_store(which)
        for doc_id in live:
            hit = store.get([f"{doc_id}#t0"])[0]
            # the text model embeds a chunk after its section path (CLIP, whose 77 tokens are dear, does not)
            text = embedding_text(hit.text or "", hit.metadata) if which == "text" else hit.text or ""
            top = store.query(embedder.embed_texts([text])[0].tolist(), 1)
            assert top and top[0].text == hit.text and top[0].score > 0.999, (which, doc_id, top)


def search_sees_only_live_documents(kb: Any, docs: Mapping[str, Expected], dead_markers: Iterable[str],
                                    queries: Iterable[str]) -> None:
    """BM25 and hybrid search return only documents that have records, and each version by its marker.

    A live version's marker finds exactly its document in BM25, and the document is in hybrid's
    top 5 (BM25 ranks it first, so its fused score beats every record but the text index's
    first); a marker of a version that was replaced or removed finds nothing.
    """
    searcher = Searcher(kb)
    live = {d for d, e in docs.items() if e.text is not None}
    for text in queries:
        for retriever in ("bm25", "hybrid"):
            hits = searcher.search(Query(text=text), 20, retriever=retriever)
            assert {h.doc_id for h in hits} <= live, (retriever, text, sorted({h.doc_id for h in hits} - live))
    for doc_id in sorted(live):
        mark = docs[doc_id].marker
        assert mark is not None
        found = {h.doc_id for h in searcher.search(Query(text=mark), 5, retriever="bm25")}
        assert found == {doc_id}, (doc_id, mark, found)
        fused = [h.doc_id for h in searcher.search(Query(text=mark), 5, retriever="hybrid")]
        assert doc_id in fused, (doc_id, mark, fused)
    for mark in dead_markers:
        assert searcher.search(Query(text=mark), 5, retriever="bm25") == [], f"{mark} belongs to no live version"
