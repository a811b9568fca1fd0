"""Search over a knowledge base: the joint CLIP space, the text model, BM25, or their fusion.

Hybrid search (``retriever="hybrid"``) fuses the indexes by weighted reciprocal rank; why each
index votes on what it votes on, and the fusion's constants, are in :mod:`mmrag.fusion`.

**Only the kept records are read.** Fusion needs ids and ranks, and reading a record's metadata and
text is most of a vector query's cost (about 5 ms of a 100-deep query at 10k chunks, against
1 ms for ids and distances). So with no filter but a caller's access labels, the vector indexes
give ids and scores, and only the fused top k are read; a restricted caller's stored labels are
checked on those (:mod:`mmrag.security.plan`). A user's filter, which each store applies before its
top k, and a record gone between the two reads, take the full reads.

A reranker (``reranker=``, :mod:`mmrag.rerank`) may then reread the top hits of any retriever.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

from mmrag.config import RetrievalSettings
from mmrag.errors import InvalidInputError
from mmrag.filters import FILTER_FIELDS, SearchFilter, and_where
from mmrag.fusion import RRF_K, TIE_ORDER, dedupe_documents, rrf, rrf_documents
from mmrag.kb import KnowledgeBase
from mmrag.keyword import check_where, check_where_bounds
from mmrag.protocols import Reranker
from mmrag.rerank import DEFAULT_DEPTH, rerank_hits
from mmrag.security.labels import Caller, NoAccess, access_where
from mmrag.security.plan import query_readable, read_checked, readable_candidates, reads_nothing
from mmrag.tracing import span
from mmrag.types import Hit, Query, doc_id_of, is_image_id

__all__ = ["FILTER_FIELDS", "MODALITIES", "RETRIEVERS", "RRF_K", "SINGLE_RETRIEVERS", "TIE_ORDER", "SearchFilter",
           "Searcher", "and_where", "check_weights", "dedupe_documents", "rrf", "rrf_documents"]

RetrieverName = Literal["clip", "text", "bm25", "hybrid"]
RETRIEVERS: tuple[str, ...] = ("clip", "text", "bm25", "hybrid")
SINGLE_RETRIEVERS: tuple[str, ...] = ("clip", "text", "bm25")
MODALITIES = ("text", "image", "all")
#: A ``source_prefix`` naming at most this many documents becomes a native ``doc_id $in`` filter
#: (Chroma answers a 5,000-id ``$in`` in ~50 ms); a broader one is checked on over-fetched hits.
MAX_IN_IDS = 2000
#: The deepest a vector index is asked while filling ``k`` filtered or distinct hits, so a query's
#: cost stays bounded whatever the collection's size (a filter that keeps fewer than 1 in ~100 of
#: the nearest records may then return fewer than ``k``; a narrower ``source_prefix`` avoids it).
MAX_FETCH = 4000


class _NoMatch(Exception):
    """The filters exclude every document: the answer is empty without asking any index."""


@dataclass(frozen=True)
class _Plan:
    """A query's filters, compiled once: a native ``where`` plus a check for over-fetched hits."""

    where: dict[str, Any] | None
    prefix: str | None  # checked on the hits when it was too broad to become a native filter
    #: ``where`` is the caller's access filter alone: the vector stores may answer it by the
    #: cheaper exact plan of :mod:`mmrag.security.plan`.
    access_only: bool = False

    def keep(self, hit: Hit) -> bool:
        return self.prefix is None or hit.source.startswith(self.prefix)


class Searcher:
    """Runs queries against a :class:`KnowledgeBase`.

    Args:
        kb: the knowledge base.
        weights: fusion weight per index (``clip``, ``text``, ``bm25``); missing ones are 1.
        depth: candidates each index contributes to a fusion.
        rrf_k: the reciprocal rank fusion constant.
        reranker: rereads the top hits of every search (:mod:`mmrag.rerank`); None: no rerank stage.
        rerank_depth: how many top hits the reranker rereads.
        caller: whose documents every search may return (:class:`~mmrag.security.Caller`); None
            reads every document. The caller's labels become a filter inside each index's query.
        unlabelled: what unlabelled documents are to a restricted caller: ``public`` or ``private``.

    Example:
        >>> hits = Searcher(kb).search(Query(text="a red circle"), k=5, modality="image")  # doctest: +SKIP
        >>> finance = Searcher(kb).as_caller(Caller.of(["finance"]))  # doctest: +SKIP
    """

    def __init__(self, kb: KnowledgeBase, *, weights: Mapping[str, float] | None = None, depth: int | None = None,
                 rrf_k: int | None = None, reranker: Reranker | None = None,
                 rerank_depth: int = DEFAULT_DEPTH, caller: Caller | None = None,
                 unlabelled: str = "public") -> None:
        defaults = RetrievalSettings()
        self.kb = kb
        self.caller = caller
        self.unlabelled = unlabelled
        try:
            access_where(caller, unlabelled)  # refuses a bad ``unlabelled`` now rather than per query
        except NoAccess:
            pass
        #: Told each query vector as ``record(collection, space, vector)`` (the server's drift log).
        self.query_log: Any = None
        self.weights = check_weights({**defaults.weights.model_dump(), **dict(weights or {})})
        self.depth = int(depth if depth is not None else defaults.depth)
        self.rrf_k = int(rrf_k if rrf_k is not None else defaults.rrf_k)
        if self.depth < 1:
            raise InvalidInputError(f"depth must be >= 1, got {self.depth}")
        if self.rrf_k < 0:
            raise InvalidInputError(f"rrf_k must be >= 0, got {self.rrf_k}")
        self.reranker = reranker
        self.rerank_depth = _check_depth(rerank_depth)

    @classmethod
    def from_settings(cls, kb: KnowledgeBase, settings: RetrievalSettings, *, reranker: Reranker | None = None,
                      rerank_depth: int = DEFAULT_DEPTH, unlabelled: str = "public") -> "Searcher":
        """A searcher with the weights, depth and fusion constant of ``settings.retrieval`` (and a reranker)."""
        return cls(kb, weights=settings.weights.model_dump(), depth=settings.depth, rrf_k=settings.rrf_k,
                   reranker=reranker, rerank_depth=rerank_depth, unlabelled=unlabelled)

    def as_caller(self, caller: Caller | None) -> "Searcher":
        """This searcher (same knowledge base, weights and reranker) restricted to ``caller``'s documents.

        Cheap (no model or index is opened): the server makes one per request from a shared searcher.
        """
        twin = copy.copy(self)
        twin.caller = caller
        return twin

    def can_read(self, hit: Hit) -> bool:
        """Whether this searcher's caller may see ``hit`` (for lookups by id, which no query filters)."""
        from mmrag.security.labels import can_read

        return can_read(self.caller, hit.metadata, self.unlabelled)

    def search(self, query: Query, k: int = 10, *, modality: str = "all", retriever: str = "clip",
               where: Mapping[str, Any] | None = None, filters: SearchFilter | None = None,
               dedupe: bool = False, reranker: Reranker | None = None, rerank_depth: int | None = None) -> list[Hit]:
        """Return the top ``k`` records for ``query`` that pass the filters.

        Args:
            query: text and/or image.
            k: number of hits (fewer only when fewer records match).
            modality: ``text``, ``image`` or ``all`` (only the CLIP index holds images).
            retriever: ``clip``, ``text``, ``bm25`` or ``hybrid`` (reciprocal rank fusion).
            where: a raw Chroma metadata filter, ANDed with ``filters``; BM25 evaluates it too.
            filters: metadata filters, applied to every index (BM25 included) before the top ``k``.
            dedupe: return each document's best hit only (still ``k`` documents when there are).
            reranker: rereads the top ``rerank_depth`` hits (text hits only; images keep their
                places); None: this searcher's own reranker, if it has one.
            rerank_depth: default this searcher's ``rerank_depth``.

        Raises:
            InvalidInputError: an unknown retriever/modality, an empty query, an image query for a
                text-only retriever, or malformed filters.
        """
        if retriever not in RETRIEVERS:
            raise InvalidInputError(f"Unknown retriever {retriever!r}. Known: {', '.join(RETRIEVERS)}")
        if modality not in MODALITIES:
            raise InvalidInputError(f"Unknown modality {modality!r}. Known: {', '.join(MODALITIES)}")
        if not (query.text and query.text.strip()) and query.image is None:
            raise InvalidInputError("A query needs text or an image")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a whole number >= 1, got {k!r}")
        if filters is not None and not isinstance(filters, SearchFilter):
            raise InvalidInputError("filters must be a SearchFilter (SearchFilter.from_dict reads a plain mapping)")
        if where is not None:
            check_where(where)
        reranker = reranker if reranker is not None else self.reranker
        depth = self.rerank_depth if rerank_depth is None else _check_depth(rerank_depth)
        # The first stage fills the reranker's depth; the k best of the reread hits are returned.
        rereads = reranker is not None and bool(query.text and query.text.strip())
        want = max(k, depth) if rereads else k
        if retriever != "clip" and retriever != "hybrid":
            if query.image is not None:
                raise InvalidInputError(f"The {retriever!r} retriever reads text only; use --retriever clip for image queries")
            if modality == "image":
                raise InvalidInputError(f"The {retriever!r} retriever holds no images; use --retriever clip")
        with span("search", collection=self.kb.collection, retriever=retriever, modality=modality, k=k,
                  query_text=bool(query.text), query_image=query.image is not None) as traced:
            try:
                plan = self._plan(where, filters)
            except _NoMatch:
                return []
            if retriever == "hybrid":
                hits = self._hybrid(query, want, modality, plan, dedupe)
            else:
                hits = self._single(retriever, query, want, modality, plan, dedupe)
            if rereads and reranker is not None:
                hits = rerank_hits(reranker, query.text or "", hits, depth)[:k]
            traced.set_attributes(hits=len(hits), reranker=reranker.name if rereads and reranker else None)
            return hits

    def search_documents(self, query: Query, k: int = 10, *, retriever: str = "clip", modality: str = "all",
                         filters: SearchFilter | None = None) -> list[Hit]:
        """Top ``k`` distinct documents: each document's best hit, in rank order."""
        return self.search(query, k, retriever=retriever, modality=modality, filters=filters, dedupe=True)

    # -- filters --------------------------------------------------------------------------------
    def _plan(self, where: Mapping[str, Any] | None, filters: SearchFilter | None) -> _Plan:
        try:
            # Inside every index's query, before its top k: never a check on hits already taken.
            allowed = access_where(self.caller, self.unlabelled)
        except NoAccess:
            raise _NoMatch from None
        if allowed is not None and reads_nothing(self.kb, self.caller, self.unlabelled):  # type: ignore[arg-type]
            raise _NoMatch  # a caller of labels no document carries: no index is asked
        mine = and_where(dict(where) if where else None, filters.where() if filters else None)
        if mine:
            check_where_bounds(mine)  # the caller's own filter; the indexes take the access clause on top
        base = and_where(mine, allowed)
        prefix = filters.source_prefix if filters else None
        if prefix is None:
            return _Plan(base, None, access_only=allowed is not None and not mine)
        # An index range scan on the manifest's sources, bounded by what a native filter can take.
        ids = self.kb.manifest.doc_ids_under(self.kb.collection, prefix, MAX_IN_IDS + 1)
        if not ids:
            raise _NoMatch
        if len(ids) <= MAX_IN_IDS:
            return _Plan(and_where(base, {"doc_id": {"$in": ids}}), None)
        return _Plan(base, prefix)

    # -- single retrievers ------------------------------------------------------------------------
    def _single(self, name: str, query: Query, k: int, modality: str, plan: _Plan, dedupe: bool) -> list[Hit]:
        return self._retrieve(name, query, k, modality, plan, dedupe)

    def _retrieve(self, name: str, query: Query, want: int, modality: str, plan: _Plan, dedupe: bool,
                  pending: dict[str, Any] | None = None) -> list[Hit]:
        """One retriever's top ``want`` (its query embedded and its index read), traced as one span.

        With ``pending``, a vector index may answer with ids and scores alone (:func:`_unread`),
        each id entered in ``pending`` with the store that holds its record: a fusion reads only
        the records it keeps (:meth:`_read_kept`).
        """
        with span("retrieve", collection=self.kb.collection, retriever=name, modality=modality, k=want) as traced:
            hits = _collect(self._fetcher(name, query, modality, plan, pending), want, plan, dedupe)
            traced.set_attributes(hits=len(hits))
            return hits

    def _fetcher(self, name: str, query: Query, modality: str, plan: _Plan,
                 pending: dict[str, Any] | None = None) -> Callable[[int], list[Hit]]:
        """``fetch(n)``: the top ``n`` of one index. The query is embedded once, however deep it fetches."""
        where = plan.where
        if name == "bm25":
            # tantivy evaluates a broad source prefix itself, so BM25 never over-fetches for it.
            return lambda n: self.kb.keyword.query(query.text or "", n, where=where, source_prefix=plan.prefix)
        if name == "text":
            raw = self.kb.text.embed_texts([query.text or ""])[0]
            self._observe("text", raw)
            vec = raw.tolist()
            if pending is not None:
                return lambda n: self._ids_first("text", self.kb.text_store, vec, n, where, None, plan, pending)
            if plan.access_only:
                return lambda n: self._readable("text", self.kb.text_store, vec, n, where, None)
            return lambda n: self.kb.text_store.query(vec, n, where)
        clip = self.kb.clip
        vecs = []
        if query.text and query.text.strip():
            vecs.append(clip.embed_texts([query.text])[0])
            self._observe("clip-text", vecs[-1])
        if query.image is not None:
            vecs.append(clip.embed_images([query.image])[0])
            self._observe("clip-image", vecs[-1])
        mean = (sum(vecs) / len(vecs)).tolist()
        filt = and_where(dict(where) if where else None, {"modality": modality} if modality != "all" else None)
        if pending is not None:
            picked = None if modality == "all" else modality
            return lambda n: self._ids_first("clip", self.kb.clip_store, mean, n, filt, picked, plan, pending)
        if plan.access_only:
            return lambda n: self._readable("clip", self.kb.clip_store, mean, n, filt, None if modality == "all" else modality)
        return lambda n: self.kb.clip_store.query(mean, n, filt)

    def _readable(self, which: str, store: Any, vec: list[float], n: int, where: dict[str, Any] | None,
                  modality: str | None) -> list[Hit]:
        """A restricted caller's top ``n`` of a vector store, by the plan its share of the store makes cheaper."""
        return query_readable(self.kb, which, store, vec, n, self.caller, self.unlabelled,  # type: ignore[arg-type]
                              lambda: store.query(vec, n, where), modality)

    def _ids_first(self, which: str, store: Any, vec: list[float], n: int, where: dict[str, Any] | None,
                   modality: str | None, plan: _Plan, pending: dict[str, Any]) -> list[Hit]:
        """The top ``n`` of a vector store as unread hits (ids and scores), or read ones when it cannot.

        Unrestricted, the store's unfiltered nearest ids; for a restricted caller, the ones its
        labels allow (:func:`~mmrag.security.plan.readable_candidates`). Anything else (a store
        without ``nearest``, a plan that needs the store's filter) is the ordinary read query.
        """
        if plan.access_only:
            chosen = readable_candidates(self.kb, which, store, vec, n, self.caller, self.unlabelled,  # type: ignore[arg-type]
                                         modality)
        else:
            nearest = getattr(store, "nearest", None)
            chosen = nearest(vec, n, modality) if nearest is not None else None
        if chosen is None or any(doc_id_of(rid) is None for rid, _ in chosen):
            return store.query(vec, n, where)  # with the caller's access where, when it has one
        for rid, _ in chosen:
            pending.setdefault(rid, store)
        return [_unread(rid, score) for rid, score in chosen]

    def _read_kept(self, hits: Sequence[Hit], pending: Mapping[str, Any], plan: _Plan) -> list[Hit] | None:
        """``hits`` with every unread one read from its store (fused score kept); None when one
        is gone, or its stored labels refuse a restricted caller: the search is then run again
        with every index read in full."""
        wanted: dict[int, tuple[Any, list[tuple[str, float]]]] = {}  # per store: the store, its (id, score)s
        for hit in hits:
            if _is_unread(hit):
                store = pending[hit.id]
                wanted.setdefault(id(store), (store, []))[1].append((hit.id, hit.score))
        caller = self.caller if plan.access_only else None
        found: dict[str, Hit] = {}
        for store, chosen in wanted.values():
            read = read_checked(self.kb, store, chosen, caller, self.unlabelled)
            if read is None:
                return None
            found.update((h.id, h) for h in read)
        return [found[h.id] if _is_unread(h) else h for h in hits]

    def _observe(self, space: str, vector: Any) -> None:
        if self.query_log is not None:
            self.query_log.record(self.kb.collection, space, vector)

    # -- fusion -----------------------------------------------------------------------------------
    def _hybrid(self, query: Query, k: int, modality: str, plan: _Plan, dedupe: bool, *,
                read_late: bool = True) -> list[Hit]:
        depth = max(k, self.depth)
        # Fusion needs ids and ranks only: with no filter but the caller's access (whose stored
        # labels are checked on the records kept), the vector indexes give ids and scores, and
        # only the k fused hits are read: a record's metadata and text cost about 0.05 ms each,
        # most of a 100-deep query.
        pending: dict[str, Any] | None = (
            {} if read_late and plan.prefix is None and (plan.where is None or plan.access_only) else None)
        lists: dict[str, list[Hit]] = {}
        if query.text and query.text.strip() and modality != "image":
            for name in ("text", "bm25"):
                if self.weights[name] > 0:
                    lists[name] = self._retrieve(name, query, depth, modality, plan, dedupe, pending)
        # CLIP votes on images only while the text indexes judge the text (module docstring); it
        # ranks everything when the query has an image or when no text index takes part.
        text_judged = bool(lists) and query.image is None
        clip_modality = ("image" if modality != "text" else None) if text_judged else modality
        if clip_modality is not None and (self.weights["clip"] > 0 or not lists):
            lists["clip"] = self._retrieve("clip", query, depth, clip_modality, plan, dedupe, pending)
        weights = self.weights if len(lists) > 1 else {name: 1.0 for name in lists}
        with span("fuse", collection=self.kb.collection, retrievers=sorted(lists), k=k,
                  candidates=sum(len(v) for v in lists.values())) as traced:
            fused = rrf_documents(lists, weights, self.rrf_k) if dedupe else rrf(lists, weights, self.rrf_k)
            traced.set_attributes(hits=min(k, len(fused)))
        if not pending:
            return fused[:k]
        kept = self._read_kept(fused[:k], pending, plan)
        if kept is None:  # a record went, or its labels changed, between the two reads
            return self._hybrid(query, k, modality, plan, dedupe, read_late=False)
        return kept


def _unread(rid: str, score: float) -> Hit:
    """A vector index's hit before its record is read: id, score, and what the id tells (document, modality)."""
    return Hit(id=rid, doc_id=doc_id_of(rid) or "", source="", modality="image" if is_image_id(rid) else "text",
               score=score, metadata=_UNREAD)


def _is_unread(hit: Hit) -> bool:
    return hit.metadata is _UNREAD


#: The metadata of an unread hit (every stored record has at least its ``doc_id``): identity marks it.
_UNREAD: dict[str, Any] = {}


def _collect(fetch: Callable[[int], list[Hit]], want: int, plan: _Plan, dedupe: bool) -> list[Hit]:
    """``want`` hits that pass ``plan`` (distinct documents if ``dedupe``), fetching deeper as needed."""
    if plan.prefix is None and not dedupe:
        return fetch(want)
    n = min(max(2 * want, 50), MAX_FETCH)
    while True:
        hits = fetch(n)
        kept = [h for h in hits if plan.keep(h)]
        if dedupe:
            kept = dedupe_documents(kept)
        if len(kept) >= want or len(hits) < n or n >= MAX_FETCH:
            return kept[:want]
        n = min(n * 4, MAX_FETCH)


def _check_depth(depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InvalidInputError(f"rerank_depth must be a whole number >= 1, got {depth!r}")
    return depth


def check_weights(weights: Mapping[str, Any]) -> dict[str, float]:
    """Validate fusion weights: the keys ``clip``, ``text``, ``bm25``; finite numbers >= 0, not all 0.

    Raises:
        InvalidInputError: an unknown key or a bad value, naming it.
    """
    out: dict[str, float] = {}
    for name, value in weights.items():
        if name not in SINGLE_RETRIEVERS:
            raise InvalidInputError(f"Unknown fusion weight {name!r}. Known: {', '.join(SINGLE_RETRIEVERS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidInputError(f"weights.{name} must be a number >= 0, got {value!r}")
        out[name] = float(value)
    for name in SINGLE_RETRIEVERS:
        out.setdefault(name, 1.0)
    if not any(out.values()):
        raise InvalidInputError("At least one fusion weight must be above 0")
    return out
