"""Contract of :class:`mmrag.protocols.VectorStore`, run over every implementation (conftest.py).

InMemoryStore is a fake; these tests are what keeps it telling the truth about ChromaStore.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mmrag.errors import EmbedderMismatchError, ForeignCollectionError, StoreError
from mmrag.protocols import VectorStore
from mmrag.types import Record
from tests.stores.cases import ALL, DIM, QUIRKS, REFUSED, WHERES, records
from tests.helpers.stores import IDENTITY, StoreFactory


def _filled(store: Any) -> Any:
    store.upsert(records())
    return store


def _ids(rows: Any) -> list[str]:
    return sorted(r[0] for r in rows)


def test_is_a_vector_store(store: Any) -> None:
    assert isinstance(store, VectorStore)
    assert isinstance(store.name, str) and store.name


def test_identity_is_the_embedders(make_store: StoreFactory) -> None:
    # Until 49a4fd1 the owner key sat under the identity prefix and showed up here.
    assert make_store().identity == IDENTITY


def test_identity_is_recorded_when_a_model_opens_a_collection_a_reader_created(make_store: StoreFactory) -> None:
    """A collection `mmrag status` created (no model loaded) still gets the embedder's identity, so a
    different model is refused later: before 49a4fd1 the owner key made it look claimed already."""
    if not make_store.persistent:
        pytest.skip(f"{make_store.kind}: nothing persists to reopen by name")
    reader = make_store(identity=None)  # what `mmrag status` opens before anything was ingested
    assert make_store(name=reader.name).identity == IDENTITY
    other = {**IDENTITY, "model": "another-model"}
    with pytest.raises(EmbedderMismatchError):
        make_store(identity=other, name=reader.name)


def test_upsert_then_count_and_read_back(store: Any) -> None:
    assert store.count() == 0
    assert store.query([1.0] * DIM, 5) == []
    recs = records()
    store.upsert(recs)
    assert store.count() == len(recs)
    got = {h.id: h for h in store.get([r.id for r in recs] + ["no-such-id"])}
    assert sorted(got) == sorted(r.id for r in recs)
    for rec in recs:
        hit = got[rec.id]
        assert (hit.doc_id, hit.source, hit.text, hit.modality) == (rec.metadata["doc_id"], rec.metadata["source"],
                                                                    rec.document, rec.metadata["modality"])
        assert dict(hit.metadata) == dict(rec.metadata)
    # In no promised order: Chroma answers in its storage order.
    assert sorted(h.id for h in store.get(["r2", "img (1).png#i0", "a.txt#t0"])) == ["a.txt#t0", "img (1).png#i0", "r2"]
    assert _ids(store.iter_all()) == sorted(ALL)


def test_upsert_is_idempotent_and_replaces_by_id(store: Any) -> None:
    recs = records()
    store.upsert(recs)
    before = [(h.id, h.score) for h in store.query(recs[0].embedding, 20)]
    store.upsert(recs)
    assert store.count() == len(recs)
    assert [(h.id, pytest.approx(h.score, abs=1e-6)) for h in store.query(recs[0].embedding, 20)] == before
    changed = dataclasses.replace(recs[1], document="A new wick.", metadata={**recs[1].metadata, "page": 9})
    store.upsert([changed])
    assert store.count() == len(recs)
    (hit,) = store.get([changed.id])
    assert hit.text == "A new wick." and hit.page == 9


def test_query_returns_nearest_first_with_cosine_scores(store: Any) -> None:
    recs = _filled(store) and records()
    vectors = np.asarray([r.embedding for r in recs], dtype=np.float64)
    rng = np.random.default_rng(7)
    for q in [vectors[3], rng.standard_normal(DIM), -vectors[0], 3.0 * vectors[5]]:
        hits = store.query(q.tolist(), len(recs) + 5)
        cosine = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
        assert [h.id for h in hits] == [recs[i].id for i in np.argsort(-cosine)]  # exact on 8 records
        assert all(-1.0 - 1e-6 <= h.score <= 1.0 + 1e-6 for h in hits)
        assert [h.score for h in hits] == pytest.approx(sorted(cosine, reverse=True), abs=1e-5)
    top = store.query(recs[3].embedding, 2)
    assert len(top) == 2 and top[0].id == recs[3].id and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert store.query(recs[3].embedding, 0) == []



@pytest.mark.parametrize("where, expected", WHERES + QUIRKS, ids=[str(w) for w, _ in WHERES + QUIRKS])
def test_where_selects_the_same_ids_everywhere(make_store: StoreFactory, store: Any, where: dict[str, Any],
                                               expected: set[str]) -> None:
    _filled(store)
    assert {h.id for h in store.query([1.0] * DIM, 100, where)} == expected


@pytest.mark.parametrize("where", REFUSED, ids=[str(w) for w in REFUSED])
def test_where_chroma_refuses_is_a_store_error(store: Any, where: dict[str, Any]) -> None:
    _filled(store)
    with pytest.raises(StoreError):
        store.query([1.0] * DIM, 5, where)


def test_query_with_where_ranks_within_the_selection(store: Any) -> None:
    recs = _filled(store) and records()
    where, expected = WHERES[10]  # lang $nin [de]: six of eight
    hits = store.query(recs[5].embedding, 3, where)  # recs[5] (r2, lang de) itself is filtered out
    assert len(hits) == 3 and {h.id for h in hits} <= expected and recs[5].id not in {h.id for h in hits}
    everything = [h.id for h in store.query(recs[5].embedding, 100) if h.id in expected]
    assert [h.id for h in hits] == everything[:3]


def test_delete_docs_removes_only_those_documents(store: Any) -> None:
    _filled(store)
    store.delete_docs(["a.txt", "r1", "never-indexed"])
    left = ALL - {"a.txt#t0", "a.txt#t1", "r1"}
    assert store.count() == len(left)
    assert _ids(store.iter_all()) == sorted(left)
    assert {h.id for h in store.query([1.0] * DIM, 100)} == left
    store.delete_docs([])
    assert store.count() == len(left)


def test_delete_by_id(store: Any) -> None:
    _filled(store)
    store.delete(["a.txt#t1", "img (1).png#i0", "no-such-id"])
    assert _ids(store.iter_all()) == sorted(ALL - {"a.txt#t1", "img (1).png#i0"})


def test_fresh_upsert_after_delete_docs_writes_what_upsert_would(store: Any) -> None:
    """The write protocol deletes a document's records, then writes them with ``fresh=True``."""
    recs = _filled(store) and records()
    before = {h.id: (h.text, dict(h.metadata)) for h in store.query([1.0] * DIM, 100)}
    store.delete_docs(["a.txt", "img (1).png"])
    again = [r for r in recs if r.metadata["doc_id"] in ("a.txt", "img (1).png")]
    store.upsert(again, fresh=True)
    assert store.count() == len(recs)
    assert {h.id: (h.text, dict(h.metadata)) for h in store.query([1.0] * DIM, 100)} == before


def test_records_of_returns_exactly_those_documents(store: Any) -> None:
    _filled(store)
    by_id = {r.id: r for r in records()}
    rows = list(store.records_of(["a.txt", "r2", "never-indexed"], include=("metadatas", "documents")))
    assert _ids(rows) == ["a.txt#t0", "a.txt#t1", "r2"]
    for rid, meta, doc in rows:
        assert meta == dict(by_id[rid].metadata) and doc == by_id[rid].document
    # Only what include names is read: metadata alone by default.
    assert [(rid, doc) for rid, _, doc in sorted(store.records_of(["r3"]))] == [("r3", None)]
    assert _ids(store.records_of(["img (1).png"])) == ["img (1).png#i0", "img (1).png#t0"]
    assert list(store.records_of([])) == []


def test_iter_all_yields_each_record_once_with_its_metadata(store: Any) -> None:
    _filled(store)
    rows = list(store.iter_all())
    assert len(rows) == len(ALL) and _ids(rows) == sorted(ALL)
    assert all(meta["doc_id"] and doc is None for _, meta, doc in rows)
    # A record stored without text reads back as "" (Chroma stores no None document).
    assert {rid: doc for rid, _, doc in store.iter_all(include=("documents",))} == {r.id: r.document or "" for r in records()}


def test_parts_are_the_physical_collections_that_hold_every_record(store: Any) -> None:
    """The repair deletes orphans per physical collection through ``parts()``: until structA the
    doctor reached into the split store's halves with ``getattr``."""
    _filled(store)
    parts = list(store.parts())
    assert parts and all(isinstance(p, VectorStore) for p in parts)
    assert len({p.name for p in parts}) == len(parts)
    assert sum(p.count() for p in parts) == store.count()
    assert sorted(r[0] for p in parts for r in p.iter_all()) == _ids(store.iter_all())
    victim = records()[-1]  # deleted through the part that holds it, and gone from the whole
    holder = next(p for p in parts if p.get([victim.id]))
    holder.delete_docs([victim.metadata["doc_id"]])
    assert victim.id not in _ids(store.iter_all())


def test_batches_copy_every_record_with_its_vector_into_another_store(make_store: StoreFactory) -> None:
    """What a snapshot reads (``iter_batches``) and a restore writes (``upsert_batch``), on every backend."""
    source, copy = _filled(make_store()), make_store()
    batches = list(source.iter_batches(2))
    assert all(len(b.ids) <= 2 and b.vectors.shape == (len(b.ids), DIM) for b in batches)
    assert sorted(i for b in batches for i in b.ids) == sorted(ALL)
    for batch in batches:
        copy.upsert_batch(batch)
    assert copy.count() == source.count()
    for rec in records():
        (got,), (want,) = copy.get([rec.id]), source.get([rec.id])
        assert (got.doc_id, got.modality, got.text, got.metadata) == (want.doc_id, want.modality, want.text, want.metadata)
        np.testing.assert_allclose(copy.query(rec.embedding, 1)[0].score, 1.0, atol=1e-5)


def test_writes_of_another_data_dirs_collection_are_refused(make_store: StoreFactory) -> None:
    owned = make_store()
    owned.check_writable()  # a store this data dir owns says nothing
    foreign = make_store(foreign=True)
    for write in (foreign.check_writable, lambda: foreign.upsert(records()[:1]),
                  lambda: foreign.delete_docs(["a.txt"]), lambda: foreign.delete(["a.txt#t0"])):
        with pytest.raises(ForeignCollectionError):
            write()
    assert foreign.count() == 0


def test_malformed_writes_are_store_errors_and_change_nothing(store: Any) -> None:
    recs = _filled(store) and records()
    with pytest.raises(StoreError):
        store.upsert([Record("x", [1.0] * (DIM + 1), {"doc_id": "x"}, "wrong length")])
    with pytest.raises(StoreError):
        store.upsert([Record("y", [1.0] * DIM, {"doc_id": "y"}, "one"), Record("y", [0.5] * DIM, {"doc_id": "y"}, "two")])
    assert store.count() == len(recs) and store.get(["x", "y"]) == []


def test_none_metadata_values_are_dropped(store: Any) -> None:
    store.upsert([Record("n", [1.0] * DIM, {"doc_id": "n", "lang": None}, "text")])  # type: ignore[dict-item]
    (hit,) = store.get(["n"])
    assert "lang" not in hit.metadata
    assert {h.id for h in store.query([1.0] * DIM, 5, {"lang": {"$ne": "en"}})} == {"n"}


def test_update_metadata_merges_deletes_and_keeps_vectors(store: Any) -> None:
    """Relabelling (issue 28) is this call: keys merge, ``None`` deletes, vectors and text stay."""
    recs = records()
    store.upsert(recs)
    first, other = recs[0], recs[1]
    before = store.query(list(first.embedding), len(recs))
    store.update_metadata([first.id, "no-such-id"], [{"acl": True, "acl:group:hr": True}, {"acl": True}])
    got = store.get([first.id])[0]
    assert got.metadata["acl:group:hr"] is True and got.metadata["doc_id"] == first.metadata["doc_id"]
    assert got.text == first.document
    assert [h.id for h in store.query([1.0] * DIM, 50, where={"acl:group:hr": True})] == [first.id]
    store.update_metadata([first.id], [{"acl": None, "acl:group:hr": None}])
    got = store.get([first.id])[0]
    assert "acl" not in got.metadata and "acl:group:hr" not in got.metadata
    assert [h.id for h in store.query(list(first.embedding), len(recs))] == [h.id for h in before]
    assert "acl" not in store.get([other.id])[0].metadata and store.count() == len(recs)
