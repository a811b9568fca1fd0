"""Search over a knowledge base: the joint CLIP space, the text model, BM25, or their fusion."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, Mapping, Sequence

from mmrag.errors import InvalidInputError
from mmrag.kb import KnowledgeBase
from mmrag.types import Hit, Query

RetrieverName = Literal["clip", "text", "bm25", "hybrid"]
RETRIEVERS: tuple[str, ...] = ("clip", "text", "bm25", "hybrid")
MODALITIES = ("text", "image", "all")
#: Reciprocal rank fusion constant (Cormack et al. 2009).
RRF_K = 60


class Searcher:
    """Runs queries against a :class:`KnowledgeBase`.

    Example:
        >>> hits = Searcher(kb).search(Query(text="a red circle"), k=5, modality="image")  # doctest: +SKIP
    """

    def __init__(self, kb: KnowledgeBase, *, weights: Mapping[str, float] | None = None) -> None:
        self.kb = kb
        self.weights = dict(weights or {"clip": 1.0, "text": 1.0, "bm25": 1.0})
        self._keyword: Any = None

    def search(self, query: Query, k: int = 10, *, modality: str = "all", retriever: str = "clip",
               where: Mapping[str, Any] | None = None) -> list[Hit]:
        """Return the top ``k`` records for ``query``.

        Args:
            query: text and/or image.
            k: number of hits.
            modality: ``text``, ``image`` or ``all`` (only the CLIP index holds images).
            retriever: ``clip``, ``text``, ``bm25`` or ``hybrid`` (reciprocal rank fusion).
            where: a Chroma metadata filter, applied to the vector indexes.

        Raises:
            InvalidInputError: an unknown retriever/modality, an empty query, or an image query
                for a text-only retriever.
        """
        if retriever not in RETRIEVERS:
            raise InvalidInputError(f"Unknown retriever {retriever!r}. Known: {', '.join(RETRIEVERS)}")
        if modality not in MODALITIES:
            raise InvalidInputError(f"Unknown modality {modality!r}. Known: {', '.join(MODALITIES)}")
        if not (query.text and query.text.strip()) and query.image is None:
            raise InvalidInputError("A query needs text or an image")
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if retriever == "clip":
            return self._clip(query, k, modality, where)
        if query.image is not None and retriever != "hybrid":
            raise InvalidInputError(f"The {retriever!r} retriever reads text only; use --retriever clip for image queries")
        if modality == "image" and retriever != "hybrid":
            raise InvalidInputError(f"The {retriever!r} retriever holds no images; use --retriever clip")
        if retriever == "text":
            return self._text(query.text or "", k, where)
        if retriever == "bm25":
            return self._bm25(query.text or "", k)
        return self._hybrid(query, k, modality, where)

    def search_documents(self, query: Query, k: int = 10, *, retriever: str = "clip", modality: str = "all") -> list[Hit]:
        """Top ``k`` distinct documents: each document's best hit, in rank order."""
        depth = max(50, 5 * k)
        hits = self.search(query, depth, retriever=retriever, modality=modality)
        return dedupe_documents(hits)[:k]

    # -- single retrievers --------------------------------------------------------------------
    def _clip(self, query: Query, k: int, modality: str, where: Mapping[str, Any] | None) -> list[Hit]:
        clip = self.kb.clip
        vecs = []
        if query.text and query.text.strip():
            vecs.append(clip.embed_texts([query.text])[0])
        if query.image is not None:
            vecs.append(clip.embed_images([query.image])[0])
        vec = sum(vecs) / len(vecs)
        filt = _and(where, {"modality": modality} if modality != "all" else None)
        return self.kb.clip_store.query(vec.tolist(), k, filt)

    def _text(self, text: str, k: int, where: Mapping[str, Any] | None) -> list[Hit]:
        vec = self.kb.text.embed_texts([text])[0]
        return self.kb.text_store.query(vec.tolist(), k, where)

    def _bm25(self, text: str, k: int) -> list[Hit]:
        if self._keyword is None:
            self._keyword = self.kb.keyword()
            if self._keyword is None:
                return []
        return self._keyword.query(text, k)

    def _hybrid(self, query: Query, k: int, modality: str, where: Mapping[str, Any] | None) -> list[Hit]:
        depth = max(k, 50)
        lists: dict[str, list[Hit]] = {"clip": self._clip(query, depth, modality, where)}
        if query.text and modality != "image":
            lists["text"] = self._text(query.text, depth, where)
            if not where:
                lists["bm25"] = self._bm25(query.text, depth)
        return rrf(lists, self.weights)[:k]


def rrf(ranked: Mapping[str, Sequence[Hit]], weights: Mapping[str, float], k: int = RRF_K) -> list[Hit]:
    """Fuse ranked lists by weighted reciprocal rank; ``score`` becomes the fused score."""
    scores: dict[str, float] = {}
    best: dict[str, Hit] = {}
    for name, hits in ranked.items():
        w = weights.get(name, 1.0)
        for rank, hit in enumerate(hits):
            scores[hit.id] = scores.get(hit.id, 0.0) + w / (k + rank + 1)
            best.setdefault(hit.id, hit)
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return [replace(best[i], score=scores[i]) for i in order]


def dedupe_documents(hits: Sequence[Hit]) -> list[Hit]:
    """Keep each document's first (best) hit."""
    seen: set[str] = set()
    out = []
    for hit in hits:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            out.append(hit)
    return out


def _and(*filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    parts = [dict(f) for f in filters if f]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}
