"""Chroma backend. Every chromadb exception is translated to :class:`StoreError` here.

Collections are opened with ``embedding_function=None`` every time (chroma would otherwise
download an ONNX model) and created in cosine space, with the embedder's identity stored in the
collection metadata so a different model is refused instead of silently mixing spaces.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np

from mmrag.errors import EmbedderMismatchError, ForeignCollectionError, InvalidInputError, StoreError
from mmrag.keyword import MAX_INDEX_CONDITIONS, check_where_bounds
from mmrag.protocols import VectorStore
from mmrag.types import Hit, Record, RecordBatch

log = logging.getLogger(__name__)

IDENTITY_PREFIX = "mmrag:"
#: Keys of the identity that must match; precision is recorded but not enforced, because bf16
#: and fp32 vectors of the same weights agree (cosine >= 0.99, checked at load).
ENFORCED_IDENTITY = ("embedder", "model", "weights", "dim", "preprocess")
#: Collection metadata key naming the data dir that owns (writes) a collection on a shared server.
OWNER_KEY = "mmrag_owner"  # not under IDENTITY_PREFIX: ownership is not part of the embedder identity
#: Documents per ``doc_id $in`` read: Chroma answers a 1,000-id ``$in`` in a few ms.
IN_BATCH = 1000


@contextlib.contextmanager
def _translate(action: str) -> Iterator[None]:
    try:
        yield
    except (StoreError, EmbedderMismatchError, InvalidInputError):
        raise
    except Exception as exc:  # noqa: BLE001 - chromadb raises many exception types; none may leak
        error = StoreError(f"Chroma failed to {action}: {type(exc).__name__}: {exc}")
        error.transient = _is_transient(exc)
        raise error from exc


#: HTTP statuses a Chroma server (or a proxy before it) answers when it is overloaded or restarting.
#: Not 500: chromadb gives its ``InternalError`` (embedded too) code 500, and that is what a full
#: disk raises; a write that cannot succeed must fail at once with the data dir's error, not after
#: 30 s of retries per batch.
_TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


def _is_transient(exc: BaseException) -> bool:
    """Whether a chromadb failure may pass if the request is sent again (writers retry those)."""
    import httpx

    if isinstance(exc, httpx.TransportError):  # refused, reset, timed out, protocol error
        return True
    code = getattr(exc, "code", None)
    try:
        status = int(code()) if callable(code) else None
    except Exception:  # noqa: BLE001 - a foreign exception's code() is not ours to trust
        status = None
    return status in _TRANSIENT_STATUS


#: What Chroma says when a record it just found in its vector index is gone from its record store:
#: a read racing a delete (seen as a 503 by a search during the soak's concurrent deletes).
_DELETED_MID_READ = "Error finding id"
#: Extra attempts a read gets after such a race; each sees the index after the delete.
READ_RACE_RETRIES = 2


def _read(action: str, call: Callable[[], Any]) -> Any:
    """``call()`` translated as :func:`_translate` does, sent again when it raced a concurrent delete.

    Reads are idempotent, and the race is Chroma's own (its index and its records are updated one
    after the other), so a retry answers from the state after the delete instead of failing a search.
    """
    for attempt in range(READ_RACE_RETRIES + 1):
        try:
            with _translate(action):
                return call()
        except StoreError as exc:
            if _DELETED_MID_READ not in str(exc) or attempt == READ_RACE_RETRIES:
                raise
            log.info("%s raced a delete (%s); reading again", action, exc)
    raise AssertionError("unreachable")  # pragma: no cover


#: Seconds a Chroma server request may take before it fails (chromadb itself waits forever).
SERVER_TIMEOUT = 120.0


def open_client(data_dir: Path, url: str | None = None, *, timeout: float = SERVER_TIMEOUT) -> Any:
    """Return an embedded ``PersistentClient`` under ``data_dir/chroma``, or an ``HttpClient`` for ``url``.

    A server request that gets no answer within ``timeout`` seconds fails with a
    :class:`StoreError` (a hung or stopped server would otherwise block the caller forever).
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    with _translate(f"open the store{f' at {url}' if url else ''}"):
        if url:
            parsed = urlparse(url)
            if parsed.scheme not in {"http", "https"} or not parsed.hostname:
                raise InvalidInputError(f"store URL must look like http://host:port, got {url!r}")
            client = chromadb.HttpClient(
                host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https", settings=settings,
            )
            _set_timeout(client, timeout)
            return client
        (data_dir / "chroma").mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=settings)


def _set_timeout(client: Any, timeout: float) -> None:
    # chromadb 1.5.9 builds its httpx session with timeout=None and offers no setting for it; the
    # session is private, so this is checked by tests/stores/test_store_safety.py.
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if not isinstance(session, httpx.Client):
        raise StoreError("this chromadb version keeps its HTTP session elsewhere; mmrag cannot bound its requests")
    session.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))


class ChromaStore:
    """One Chroma collection holding vectors of one embedder."""

    def __init__(self, client: Any, name: str, identity: Mapping[str, str | int] | None, *,
                 owner: str | None = None, may_claim: bool = True) -> None:
        """Open (or create) collection ``name``.

        Args:
            client: a chromadb client from :func:`open_client`.
            name: the collection name.
            identity: the embedder's identity; ``None`` opens without checking it (status, delete).
            owner: the id of the data dir that writes through this store. A collection owned by
                another data dir (two data dirs or hosts sharing one Chroma server) is readable,
                but every write to it is refused, so neither deletes the other's records.
            may_claim: whether an unowned existing collection may be claimed for ``owner`` (only
                when this data dir's manifest already knows the collection: a collection written
                before owners were recorded).

        Raises:
            EmbedderMismatchError: the collection was built by an embedder with another identity.
            StoreError: Chroma failed.
        """
        self.name = name
        self._client = client
        wanted: dict[str, Any] = {f"{IDENTITY_PREFIX}{k}": v for k, v in (identity or {}).items()}
        if owner:
            wanted[OWNER_KEY] = owner
        with _translate(f"open collection {name!r}"):
            self._max_batch = int(client.get_max_batch_size())
            self._col = client.get_or_create_collection(
                name=name, embedding_function=None, metadata=wanted or None,
                configuration={"hnsw": {"space": "cosine"}},
            )
            stored = dict(self._col.metadata or {})
            claim = {}
            if identity and not any(k.startswith(IDENTITY_PREFIX) for k in stored):
                # Created by a reader that had no embedder loaded: claim it now.
                claim.update({k: v for k, v in wanted.items() if k.startswith(IDENTITY_PREFIX)})
            if owner and OWNER_KEY not in stored and may_claim:
                claim[OWNER_KEY] = owner
            if claim:
                self._col.modify(metadata={**stored, **claim})
                stored.update(claim)
        self.owner = stored.get(OWNER_KEY)
        self._foreign = bool(owner) and self.owner != owner
        wanted_plain = dict(identity or {})
        mismatched = {
            k: (stored.get(f"{IDENTITY_PREFIX}{k}"), wanted_plain.get(k))
            for k in ENFORCED_IDENTITY
            if identity and f"{IDENTITY_PREFIX}{k}" in stored and stored.get(f"{IDENTITY_PREFIX}{k}") != wanted_plain.get(k)
        }
        if mismatched:
            detail = ", ".join(f"{k}: stored {a!r} vs configured {b!r}" for k, (a, b) in mismatched.items())
            raise EmbedderMismatchError(
                f"Collection {name!r} was built with a different embedding model ({detail}). "
                "Re-index into a new collection (--collection NEW) or data directory (--data-dir NEW), "
                "or delete this one with `mmrag reset --collection ...`, then run `mmrag ingest` again."
            )
        self.identity = {k[len(IDENTITY_PREFIX):]: v for k, v in stored.items() if k.startswith(IDENTITY_PREFIX)}

    def check_writable(self) -> None:
        """Raise :class:`ForeignCollectionError` if another data dir owns this collection."""
        if self._foreign:
            raise ForeignCollectionError(
                f"Collection {self.name!r} on this Chroma server belongs to another mmrag data dir "
                f"(owner {self.owner or 'unknown'}); this data dir will not write to it. Use another "
                "--collection name, or run from the data dir that owns it."
            )

    def upsert(self, records: Sequence[Record], *, fresh: bool = False) -> None:
        """Insert or replace records, in batches Chroma accepts.

        Args:
            records: the records.
            fresh: the caller has just deleted these ids (the write protocol does), so Chroma's
                ``add`` can skip its existence checks: about a third faster on this machine.
        """
        self.check_writable()
        for lo in range(0, len(records), self._max_batch):
            part = records[lo : lo + self._max_batch]
            with _translate(f"write to {self.name!r}"):
                (self._col.add if fresh else self._col.upsert)(
                    ids=[r.id for r in part],
                    embeddings=np.asarray([r.embedding for r in part], dtype=np.float32),
                    metadatas=[dict(r.metadata) or None for r in part],  # type: ignore[misc]
                    documents=[r.document or "" for r in part],
                )

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        """Delete every record of the given documents."""
        self.check_writable()
        for lo in range(0, len(doc_ids), IN_BATCH):
            with _translate(f"delete from {self.name!r}"):
                self._col.delete(where={"doc_id": {"$in": list(doc_ids[lo : lo + IN_BATCH])}})

    def delete(self, ids: Sequence[str]) -> None:
        """Delete records by id."""
        self.check_writable()
        for lo in range(0, len(ids), self._max_batch):
            with _translate(f"delete from {self.name!r}"):
                self._col.delete(ids=list(ids[lo : lo + self._max_batch]))

    def count(self) -> int:
        """Number of records."""
        with _translate(f"count {self.name!r}"):
            return int(self._col.count())

    def query(self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """Return the ``k`` nearest records; ``score`` is cosine similarity (1 - distance).

        Chroma returns fewer than ``k`` when fewer match, so no ``count()`` is asked per query.
        """
        if k <= 0:
            return []
        if where:
            # Past these limits Chroma fails with an internal error (a 503): they are the caller's (400).
            check_where_bounds(where, MAX_INDEX_CONDITIONS)
        res = _read(f"query {self.name!r}", lambda: self._col.query(
            query_embeddings=np.asarray([vector], dtype=np.float32), n_results=k,
            where=dict(where) if where else None, include=["metadatas", "documents", "distances"]))
        hits = []
        for rid, meta, doc, dist in zip(res["ids"][0], res["metadatas"][0], res["documents"][0], res["distances"][0]):
            hits.append(hit_from(rid, meta or {}, doc, 1.0 - float(dist)))
        return hits

    def nearest(self, vector: Sequence[float], n: int, modality: str | None = None) -> list[tuple[str, float]] | None:
        """Ids and cosine scores of the ``n`` nearest records, unfiltered; None when asked for one ``modality``
        (one collection cannot pick a modality without a filter).

        Ids and distances only: Chroma reads each result's metadata and text at about 0.1 ms a
        record, so a deep candidate list costs a fraction of a full query. Hybrid search fuses these
        and reads the records it keeps with :meth:`get` (:class:`mmrag.retrieval.Searcher`, and the
        access plan of :mod:`mmrag.security.plan`).
        """
        if modality is not None:
            return None
        if n <= 0:
            return []
        res = _read(f"query {self.name!r}", lambda: self._col.query(
            query_embeddings=np.asarray([vector], dtype=np.float32), n_results=n, include=["distances"]))
        return [(rid, 1.0 - float(dist)) for rid, dist in zip(res["ids"][0], res["distances"][0])]

    def update_metadata(self, ids: Sequence[str], changes: Sequence[Mapping[str, Any]]) -> None:
        """Merge metadata changes into records (Chroma's ``update``: a ``None`` value deletes the key)."""
        self.check_writable()
        for lo in range(0, len(ids), self._max_batch):
            with _translate(f"update {self.name!r}"):
                self._col.update(ids=list(ids[lo:lo + self._max_batch]),
                                 metadatas=[dict(c) for c in changes[lo:lo + self._max_batch]])  # type: ignore[misc]

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """The records with these ids (missing ids are left out), with ``score`` 0."""
        if not ids:
            return []
        res = _read(f"read {self.name!r}", lambda: self._col.get(ids=list(ids), include=["metadatas", "documents"]))
        docs = res.get("documents") or [None] * len(res["ids"])
        return [hit_from(rid, meta or {}, doc, 0.0) for rid, meta, doc in zip(res["ids"], res["metadatas"], docs)]

    def records_of(self, doc_ids: Sequence[str], include: Sequence[str] = ("metadatas",)
                   ) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """Yield ``(id, metadata, document)`` of every record of these documents (indexed lookups)."""
        for lo in range(0, len(doc_ids), IN_BATCH):
            with _translate(f"read {self.name!r}"):
                res = self._col.get(where={"doc_id": {"$in": list(doc_ids[lo : lo + IN_BATCH])}}, include=list(include))
            metas = res.get("metadatas") or [None] * len(res["ids"])
            docs = res.get("documents") or [None] * len(res["ids"])
            for rid, meta, doc in zip(res["ids"], metas, docs):
                yield rid, dict(meta or {}), doc

    def records_where(self, where: Mapping[str, Any], limit: int) -> list[Record]:
        """Up to ``limit`` records matching ``where``, with their vectors (for moving records between collections)."""
        with _translate(f"read {self.name!r}"):
            res = self._col.get(where=dict(where), limit=limit, include=["embeddings", "metadatas", "documents"])
        docs = res.get("documents") or [None] * len(res["ids"])
        return [Record(rid, list(map(float, vec)), dict(meta or {}), doc or None)
                for rid, vec, meta, doc in zip(res["ids"], res["embeddings"], res["metadatas"], docs)]

    def embeddings(self, limit: int, offset: int = 0) -> np.ndarray:
        """Up to ``limit`` vectors from position ``offset`` in Chroma's order, as a ``(n, dim)`` array.

        For bounded samples (:mod:`mmrag.lifecycle.drift`): one page, never a scan.
        """
        if limit <= 0:
            return np.zeros((0, 0), dtype=np.float32)
        with _translate(f"read {self.name!r}"):
            res = self._col.get(include=["embeddings"], limit=limit, offset=offset)
        return _matrix(res.get("embeddings"))

    def embeddings_of(self, doc_ids: Sequence[str], limit: int) -> np.ndarray:
        """Up to ``limit`` vectors of these documents' records, as a ``(n, dim)`` array (indexed lookups)."""
        parts = []
        left = limit
        for lo in range(0, len(doc_ids), IN_BATCH):
            if left <= 0:
                break
            with _translate(f"read {self.name!r}"):
                res = self._col.get(where={"doc_id": {"$in": list(doc_ids[lo : lo + IN_BATCH])}}, limit=left,
                                    include=["embeddings"])
            part = _matrix(res.get("embeddings"))
            if len(part):
                parts.append(part)
                left -= len(part)
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def iter_all(self, include: Sequence[str] = ("metadatas",), page: int = 5000) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """Yield ``(id, metadata, document)`` for every record, a page at a time.

        Chroma pages by offset, so a full scan costs more than linear time: the write path never
        calls it. Only a repair that found records no manifest row accounts for (orphans) does,
        and tests and migrations.
        """
        offset = 0
        while True:
            with _translate(f"read {self.name!r}"):
                res = self._col.get(include=list(include), limit=page, offset=offset)
            ids = res["ids"]
            if not ids:
                return
            metas = res.get("metadatas") or [None] * len(ids)
            docs = res.get("documents") or [None] * len(ids)
            for rid, meta, doc in zip(ids, metas, docs):
                yield rid, dict(meta or {}), doc
            offset += len(ids)

    def parts(self) -> Sequence[VectorStore]:
        """One collection: this one."""
        return (self,)

    def iter_batches(self, size: int = 5000) -> Iterator[RecordBatch]:
        """Yield every record with its vector, ``size`` records at a time (snapshots).

        Pages by offset like :meth:`iter_all`, so the caller holds the writer lock for a
        consistent scan. Vectors come back as float32, exactly as Chroma stores them.
        """
        offset = 0
        while True:
            with _translate(f"read {self.name!r}"):
                res = self._col.get(include=["embeddings", "metadatas", "documents"], limit=size, offset=offset)
            ids = list(res["ids"])
            if not ids:
                return
            metas = res.get("metadatas") or [None] * len(ids)
            docs = res.get("documents") or [None] * len(ids)
            vectors = np.asarray(res["embeddings"], dtype=np.float32).reshape(len(ids), -1)
            yield RecordBatch(ids, vectors, [dict(m) if m else None for m in metas], list(docs))
            offset += len(ids)

    def upsert_batch(self, batch: RecordBatch) -> None:
        """Write a :class:`RecordBatch` as it is (vectors, metadata and documents unchanged; restores)."""
        self.check_writable()
        for lo in range(0, len(batch.ids), self._max_batch):
            hi = lo + self._max_batch
            with _translate(f"write to {self.name!r}"):
                self._col.upsert(ids=batch.ids[lo:hi], embeddings=batch.vectors[lo:hi],
                                 metadatas=batch.metadatas[lo:hi],  # type: ignore[arg-type]
                                 documents=[d if d is not None else "" for d in batch.documents[lo:hi]])


def collection_info(client: Any, name: str) -> dict[str, Any] | None:
    """The metadata (identity and owner) and HNSW space of collection ``name``; None when it does not exist."""
    with _translate(f"read collection {name!r}"):
        if name not in collection_names(client):
            return None
        col = client.get_collection(name=name, embedding_function=None)
        config = getattr(col, "configuration", None) or {}
        hnsw = config.get("hnsw") if isinstance(config, Mapping) else None
        space = hnsw.get("space") if isinstance(hnsw, Mapping) else None
        return {"name": name, "metadata": dict(col.metadata or {}), "space": space}


def collection_names(client: Any) -> set[str]:
    """Names of every collection in the store."""
    with _translate("list collections"):
        return {c if isinstance(c, str) else c.name for c in client.list_collections()}


def _matrix(vectors: Any) -> np.ndarray:
    # Chroma returns None, a list of arrays or one array, depending on version and count.
    if vectors is None or len(vectors) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(vectors, dtype=np.float32)


def hit_from(rid: str, meta: Mapping[str, Any], text: str | None, score: float) -> Hit:
    """Build a :class:`Hit` from a stored record's metadata."""
    modality = "image" if meta.get("modality") == "image" else "text"
    page = meta.get("page")
    return Hit(
        id=rid, doc_id=str(meta.get("doc_id", rid)), source=str(meta.get("source", "")),
        modality=modality, score=score, page=int(page) if isinstance(page, (int, float)) else None,
        text=text or None if modality == "text" else None, metadata=dict(meta),
    )


def ping(client: Any) -> None:
    """Raise :class:`StoreError` unless the store answers (a Chroma server may be down)."""
    with _translate("reach the store"):
        client.heartbeat()


def delete_collection(client: Any, name: str) -> bool:
    """Drop a collection; True if it existed."""
    with _translate(f"delete collection {name!r}"):
        names = {c if isinstance(c, str) else c.name for c in client.list_collections()}
        if name not in names:
            return False
        client.delete_collection(name)
        return True
