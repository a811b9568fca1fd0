"""Acceptance line 2 of issue 28: labels are enforced inside the store query, so k stays full.

10,000 forbidden documents rank above every allowed one in each index (their vectors sit next to
the query's, and their text repeats the query's words), yet a caller of the allowed group still
gets k allowed hits from every retriever: the filter is evaluated by Chroma and tantivy before
their top k, never on hits already taken. The records are written with precomputed vectors
straight to the real stores (Chroma, embedded; tantivy), so the test runs in CI time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.security.labels import Caller, label_metadata
from mmrag.types import Query, Record

FORBIDDEN = 10_000
ALLOWED = 30
K = 10
QUERY = "quarterly payroll ledger"


def _near(rng: np.random.Generator, centre: np.ndarray, n: int, noise: float) -> np.ndarray:
    vecs = centre[None, :] + noise * rng.standard_normal((n, centre.size)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    clip, text = HashingEmbedder(16), HashingEmbedder(8)
    kb = KnowledgeBase(Path(tmp_path_factory.mktemp("scale")), "scale", resolve_models(Settings()), clip=clip,
                       text=text)
    rng = np.random.default_rng(28)
    stores = {"clip": (kb.clip_store, clip.embed_texts([QUERY])[0]), "text": (kb.text_store, text.embed_texts([QUERY])[0])}
    docs = [(f"hr/{n:05d}", ("group:hr",), f"{QUERY} {QUERY} {QUERY} salaries of person {n}") for n in range(FORBIDDEN)]
    docs += [(f"pub/{n:03d}", ("group:staff",), f"the {QUERY.split()[2]} index of a public note number {n} "
                                                  "with many other words that dilute the match")
             for n in range(ALLOWED)]
    metas = [{"doc_id": d, "source": f"/corpus/{d}.txt", "doc_type": "txt", "modality": "text", "chunk": 0,
              **label_metadata(labels)} for d, labels, _ in docs]
    for store, centre in stores.values():
        # Forbidden records hug the query vector; allowed ones are far from it.
        vecs = np.concatenate([_near(rng, centre, FORBIDDEN, 0.05), _near(rng, -centre, ALLOWED, 0.5)])
        records = [Record(f"{d}#t0", vec.tolist(), meta, body) for (d, _, body), vec, meta in zip(docs, vecs, metas)]
        store.upsert(records, fresh=True)
    kb.keyword.write(records=[Record(f"{d}#t0", (), meta, body) for (d, _, body), meta in zip(docs, metas)])
    return kb


@pytest.mark.parametrize("retriever", ["clip", "text", "bm25", "hybrid"])
def test_forbidden_documents_above_the_allowed_still_leave_k_allowed_hits(kb: KnowledgeBase, retriever: str) -> None:
    everyone = Searcher(kb).search(Query(text=QUERY), K, retriever=retriever)
    # Without the filter the top k are all forbidden: they do rank above the allowed documents.
    assert len(everyone) == K and all(h.doc_id.startswith("hr/") for h in everyone)
    staff = Searcher(kb).as_caller(Caller.of(["staff"]))
    hits = staff.search(Query(text=QUERY), K, retriever=retriever)
    assert len(hits) == K
    assert all(h.doc_id.startswith("pub/") for h in hits), [h.doc_id for h in hits if not h.doc_id.startswith("pub/")]
    docs = staff.search_documents(Query(text=QUERY), K, retriever=retriever)
    assert len(docs) == K and all(h.doc_id.startswith("pub/") for h in docs)


def test_a_caller_of_no_group_gets_nothing_labelled(kb: KnowledgeBase) -> None:
    """Every document here is labelled: a key without groups finds none, however deep it looks."""
    assert Searcher(kb).as_caller(Caller.of([])).search(Query(text=QUERY), K, retriever="hybrid") == []
