"""InMemoryStore: a fake :class:`~mmrag.protocols.VectorStore` for unit tests only.

It is never a default, never a fallback on a product path, and never what a benchmark or an
evaluation measures (STYLE.md): it exists so that tests of the services can run without Chroma,
and so that ``tests/stores/test_vector_store_contract.py`` can hold it to the behaviour of
:class:`~mmrag.stores.chroma.ChromaStore`.

It mirrors Chroma 1.5.9 where the services can tell the difference:

* scores are cosine similarity (Chroma's ``1 - cosine distance``), exact rather than HNSW's
  approximation, so ties and near-ties may come back in another order;
* ``where`` filters have Chroma's semantics, quirks included (:func:`matches`);
* a ``where`` Chroma refuses, a second vector length or a duplicate id in one write is refused
  with :class:`~mmrag.errors.StoreError`, which is what ``ChromaStore`` turns Chroma's refusal into;
* metadata values of ``None`` are dropped, as Chroma drops them.

Example:
    >>> from mmrag.types import Record
    >>> store = InMemoryStore("demo")
    >>> store.upsert([Record("a#t0", [1.0, 0.0], {"doc_id": "a"}, "hello")])
    >>> [(h.id, h.score) for h in store.query([1.0, 0.0], k=1)]
    [('a#t0', 1.0)]
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mmrag.errors import ForeignCollectionError, StoreError
from mmrag.protocols import VectorStore
from mmrag.stores.chroma import hit_from
from mmrag.types import Hit, Record, RecordBatch

_ORDER = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
          "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}
_SCALARS = (str, int, float, bool)


class InMemoryStore:
    """Records of one embedder in a dict, with Chroma's query and filter semantics (a test fake).

    Args:
        name: the collection name it stands for.
        identity: the embedder identity it reports (not checked: there is nothing persisted to
            check it against).
        foreign: behave like a collection another data dir owns (every write is refused), to
            test the services' refusals without a shared Chroma server.
    """

    def __init__(self, name: str = "memory", identity: Mapping[str, str | int] | None = None, *,
                 foreign: bool = False) -> None:
        self.name = name
        self.identity: dict[str, str | int] = dict(identity or {})
        self.owner: str | None = "another data dir" if foreign else None
        self._foreign = foreign
        self._dim: int | None = None
        # id -> (vector, metadata, document), in first-insertion order.
        self._rows: dict[str, tuple[np.ndarray, dict[str, Any], str]] = {}

    def check_writable(self) -> None:
        """Raise :class:`ForeignCollectionError` if this fake was built ``foreign``."""
        if self._foreign:
            raise ForeignCollectionError(f"Collection {self.name!r} belongs to another mmrag data dir (a fake)")

    def upsert(self, records: Sequence[Record], *, fresh: bool = False) -> None:
        """Insert or replace records.

        Raises:
            StoreError: two records share an id, or a vector's length differs from the first one
                stored (Chroma refuses both, before writing anything).
        """
        self.check_writable()
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise StoreError(f"Chroma failed to write to {self.name!r}: duplicate ids in one upsert")
        vectors = [np.asarray(r.embedding, dtype=np.float32) for r in records]
        dim = self._dim
        for vec in vectors:
            dim = dim or len(vec)
            if vec.ndim != 1 or len(vec) != dim:
                raise StoreError(f"Chroma failed to write to {self.name!r}: expecting embeddings of dimension "
                                 f"{dim}, got {vec.shape}")
        self._dim = dim
        for rec, vec in zip(records, vectors):
            meta = {k: v for k, v in dict(rec.metadata).items() if v is not None}
            self._rows[rec.id] = (vec, meta, rec.document or "")

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        """Delete every record of the given documents."""
        self.check_writable()
        gone = set(doc_ids)
        for rid in [rid for rid, (_, meta, _) in self._rows.items() if meta.get("doc_id") in gone]:
            del self._rows[rid]

    def delete(self, ids: Sequence[str]) -> None:
        """Delete records by id (unknown ids are ignored)."""
        self.check_writable()
        for rid in ids:
            self._rows.pop(rid, None)

    def count(self) -> int:
        """Number of records."""
        return len(self._rows)

    def query(self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """Return the ``k`` nearest records that pass ``where``; ``score`` is cosine similarity.

        Raises:
            StoreError: ``where`` is one Chroma refuses, or the vector's length differs from the
                stored ones'.
        """
        if where:
            check_chroma_where(where)
        if k <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32)
        if self._dim is not None and q.shape != (self._dim,):
            raise StoreError(f"Chroma failed to query {self.name!r}: expecting a query of dimension {self._dim}")
        scored = []
        for rid, (vec, meta, doc) in self._rows.items():
            if where and not matches(meta, where):
                continue
            scored.append((_cosine(q, vec), rid, meta, doc))
        # Stable on ties (insertion order), so two equal scores keep one order run after run.
        scored.sort(key=lambda s: -s[0])
        return [hit_from(rid, meta, doc, score) for score, rid, meta, doc in scored[:k]]

    def nearest(self, vector: Sequence[float], n: int, modality: str | None = None) -> list[tuple[str, float]] | None:
        """Ids and scores of the ``n`` nearest records (of ``modality``, when given), as ``ChromaStore.nearest``."""
        hits = self.query(vector, n, {"modality": modality} if modality else None)
        return [(h.id, h.score) for h in hits]

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """The records with these ids (missing ids are left out), with ``score`` 0."""
        return [hit_from(rid, self._rows[rid][1], self._rows[rid][2], 0.0) for rid in ids if rid in self._rows]

    def update_metadata(self, ids: Sequence[str], changes: Sequence[Mapping[str, Any]]) -> None:
        """Merge metadata changes into records (a ``None`` value deletes the key; unknown ids are skipped, as in Chroma)."""
        self.check_writable()
        for rid, change in zip(ids, changes):
            if rid not in self._rows:
                continue
            vec, meta, doc = self._rows[rid]
            merged = {**meta, **change}
            self._rows[rid] = (vec, {k: v for k, v in merged.items() if v is not None}, doc)

    def records_of(self, doc_ids: Sequence[str], include: Sequence[str] = ("metadatas",)
                   ) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """Yield ``(id, metadata, document)`` of every record of these documents.

        Like :meth:`ChromaStore.records_of`, only what ``include`` names is filled in: the
        metadata is ``{}`` and the document ``None`` when left out.
        """
        wanted = set(doc_ids)
        for rid, (_, meta, doc) in list(self._rows.items()):
            if meta.get("doc_id") in wanted:
                yield self._row(rid, meta, doc, include)

    def iter_all(self, include: Sequence[str] = ("metadatas",), page: int = 5000
                 ) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """Yield ``(id, metadata, document)`` for every record (``page`` is accepted and ignored)."""
        for rid, (_, meta, doc) in list(self._rows.items()):
            yield self._row(rid, meta, doc, include)

    def records_where(self, where: Mapping[str, Any], limit: int) -> list[Record]:
        """Up to ``limit`` records matching ``where``, with their vectors (as :meth:`ChromaStore.records_where`)."""
        check_chroma_where(where)
        found = [Record(rid, [float(x) for x in vec], dict(meta), doc or None)
                 for rid, (vec, meta, doc) in list(self._rows.items()) if matches(meta, where)]
        return found[: max(0, limit)]

    def iter_batches(self, size: int = 5000) -> Iterator[RecordBatch]:
        """Every record with its vector, ``size`` at a time, in insertion order."""
        rows = list(self._rows.items())
        for lo in range(0, len(rows), max(1, size)):
            part = rows[lo : lo + max(1, size)]
            yield RecordBatch([rid for rid, _ in part], np.stack([vec for _, (vec, _, _) in part]).astype(np.float32),
                              [dict(meta) or None for _, (_, meta, _) in part], [doc for _, (_, _, doc) in part])

    def upsert_batch(self, batch: RecordBatch) -> None:
        """Write a batch as it is (a restore)."""
        self.upsert([Record(rid, [float(x) for x in vec], dict(meta or {}), doc)
                     for rid, vec, meta, doc in zip(batch.ids, batch.vectors, batch.metadatas, batch.documents)])

    def parts(self) -> Sequence[VectorStore]:
        """One collection: this one."""
        return (self,)

    def embeddings(self, limit: int, offset: int = 0) -> np.ndarray:
        """Up to ``limit`` vectors from position ``offset`` (insertion order), as a ``(n, dim)`` array."""
        rows = [vec for vec, _, _ in list(self._rows.values())[offset : offset + max(0, limit)]]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)

    def embeddings_of(self, doc_ids: Sequence[str], limit: int) -> np.ndarray:
        """Up to ``limit`` vectors of these documents' records, as a ``(n, dim)`` array."""
        wanted = set(doc_ids)
        rows = [vec for vec, meta, _ in list(self._rows.values()) if meta.get("doc_id") in wanted][: max(0, limit)]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)

    @staticmethod
    def _row(rid: str, meta: dict[str, Any], doc: str, include: Sequence[str]) -> tuple[str, dict[str, Any], str | None]:
        return rid, dict(meta) if "metadatas" in include else {}, doc if "documents" in include else None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    # Clipped: float32 rounding can put a vector's similarity with itself a hair above 1.
    return 0.0 if norms == 0 else max(-1.0, min(1.0, float(np.dot(a, b)) / norms))


def check_chroma_where(where: Mapping[str, Any]) -> None:
    """Refuse what Chroma 1.5.9 refuses in a ``where``.

    One key per mapping; ``$and``/``$or`` with two or more clauses; operands that are a str, int,
    float or bool; ``$in``/``$nin`` with a non-empty list of one type; order operators with a
    number (not a bool).

    Raises:
        StoreError: naming the clause (what ``ChromaStore`` raises for Chroma's ``ValueError``).
    """
    if not isinstance(where, Mapping) or len(where) != 1:
        raise _refused(f"where: expected exactly one key or operator, got {where!r}")
    key, cond = next(iter(where.items()))
    if key in ("$and", "$or"):
        if not isinstance(cond, (list, tuple)) or len(cond) < 2:
            raise _refused(f"where.{key}: expected a list of at least two filters, got {cond!r}")
        for part in cond:
            check_chroma_where(part)
        return
    if not isinstance(key, str) or key.startswith("$"):
        raise _refused(f"where: unknown operator {key!r}")
    op, arg = _operator(cond)
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)) or not arg or len({type(a) for a in arg}) != 1 \
                or not isinstance(arg[0], _SCALARS):
            raise _refused(f"where.{key}.{op}: expected a non-empty list of values of one type, got {arg!r}")
    elif op in _ORDER:
        if isinstance(arg, bool) or not isinstance(arg, (int, float)):
            raise _refused(f"where.{key}.{op}: expected an int or a float, got {arg!r}")
    elif op in ("$eq", "$ne"):
        if not isinstance(arg, _SCALARS):
            raise _refused(f"where.{key}.{op}: expected a str, int, float or bool, got {arg!r}")
    else:
        raise _refused(f"where.{key}: unknown operator {op!r}")


def _refused(detail: str) -> StoreError:
    return StoreError(f"Chroma failed to filter: {detail}")


def _operator(cond: Any) -> tuple[str, Any]:
    if isinstance(cond, Mapping):
        if len(cond) != 1:
            raise _refused(f"where: expected one operator per key, got {dict(cond)!r}")
        return next(iter(cond.items()))  # type: ignore[no-any-return]
    return "$eq", cond


def matches(meta: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether a record's metadata passes a (valid) Chroma ``where``, with Chroma 1.5.9's semantics.

    A missing key fails every operator but ``$ne`` and ``$nin``; ``1 == 1.0`` but ``True != 1``;
    strings equal only strings; the order operators compare numbers only (never a bool or a str).
    One quirk is kept on purpose, because the fake stands for Chroma: against an int value, a
    float operand is first truncated toward zero (``{"year": 2020.5}`` matches ``year: 2020``,
    ``{"n": {"$gt": -0.5}}`` does not match ``n: 0``), as Chroma's Rust filter casts it.

    Example:
        >>> matches({"page": 1}, {"page": 1.0}), matches({"fresh": True}, {"fresh": 1})
        (True, False)
    """
    key, cond = next(iter(where.items()))
    if key == "$and":
        return all(matches(meta, c) for c in cond)
    if key == "$or":
        return any(matches(meta, c) for c in cond)
    op, arg = _operator(cond)
    present = key in meta
    value = meta.get(key)
    if op == "$eq":
        return present and _equal(value, arg)
    if op == "$ne":
        return not (present and _equal(value, arg))
    if op == "$in":
        return present and any(_equal(value, a) for a in arg)
    if op == "$nin":
        return not (present and any(_equal(value, a) for a in arg))
    if not present or not _number(value):
        return False
    return bool(_ORDER[op](value, _operand(value, arg)))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def _operand(value: Any, arg: Any) -> Any:
    # Chroma's quirk (see matches): an int value is compared with the float operand cast to int.
    return math.trunc(arg) if isinstance(value, int) and isinstance(arg, float) else arg


def _equal(value: Any, arg: Any) -> bool:
    if isinstance(value, bool) or isinstance(arg, bool):
        return isinstance(value, bool) and isinstance(arg, bool) and value == arg
    if _number(value) and _number(arg):
        return bool(value == _operand(value, arg))
    return type(value) is type(arg) and value == arg
