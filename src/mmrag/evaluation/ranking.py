"""Retrieval evaluation at document level: precision@k, recall@k, MRR and nDCG@10 (no model, no LLM)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from mmrag.errors import InvalidInputError
from mmrag.evaluation.dataset import EvalQuery
from mmrag.retrieval import Searcher
from mmrag.types import Hit, ImageAsset, Query


def precision_at(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    """Share of the top ``k`` that is relevant (divided by ``k``, as usual)."""
    return sum(1 for d in ranked[:k] if d in relevant) / k


def recall_at(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    """Share of the relevant documents found in the top ``k``."""
    return sum(1 for d in ranked[:k] if d in relevant) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: frozenset[str]) -> float:
    """1 / rank of the first relevant document (0 if none)."""
    for i, d in enumerate(ranked, 1):
        if d in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k (the BEIR definition)."""
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


@dataclass
class RetrievalReport:
    """Mean metrics plus per-query rows."""

    retriever: str
    k: int
    metrics: dict[str, float]
    per_query: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"retriever": self.retriever, "k": self.k, "n_queries": len(self.per_query),
                "metrics": self.metrics, "per_query": self.per_query}


def evaluate_retrieval(searcher: Searcher, queries: Sequence[EvalQuery], *, retriever: str = "clip",
                       k: int = 10, exclude_self: bool = True) -> RetrievalReport:
    """Search each query and score its document ranking (unanswerable queries are left out).

    Args:
        exclude_self: for image queries that are themselves indexed, drop the query's own document
            (matched by file path) from its ranking, so it cannot count as its own hit.

    Raises:
        InvalidInputError: no query has relevant documents.
    """
    depth = max(k, 10)
    rows = []
    for q in queries:
        if not q.relevant:  # an unanswerable question has no gold document to rank (as in `eval run`)
            continue
        ranked = [h.doc_id for h in rank_documents(searcher, q, retriever=retriever, depth=depth,
                                                   exclude_self=exclude_self)]
        rows.append({"id": q.id, **rank_scores(ranked, q.relevant, k), "retrieved": ranked[:k]})
    if not rows:
        raise InvalidInputError("no query with relevant documents to rank: every query of the dataset is "
                                "unanswerable (\"answerable\": false); add queries with \"relevant\" doc ids")
    keys = rank_metric_names(k)
    metrics = {key: sum(r[key] for r in rows) / len(rows) for key in keys}
    return RetrievalReport(retriever=retriever, k=k, metrics=metrics, per_query=rows)


def rank_metric_names(k: int) -> list[str]:
    """The rank metrics' names for cut-off ``k``, in report order."""
    return [f"precision@{k}", f"recall@{k}", "mrr", "ndcg@10"]


def rank_scores(ranked: Sequence[str], relevant: frozenset[str], k: int) -> dict[str, float]:
    """All rank metrics of one ranking (doc ids, best first), keyed as :func:`rank_metric_names`."""
    return {f"precision@{k}": precision_at(ranked, relevant, k), f"recall@{k}": recall_at(ranked, relevant, k),
            "mrr": reciprocal_rank(ranked, relevant), "ndcg@10": ndcg_at(ranked, relevant, 10)}


def rank_documents(searcher: Searcher, q: EvalQuery, *, retriever: str, depth: int,
                   exclude_self: bool = True) -> list[Hit]:
    """The top ``depth`` distinct documents for ``q`` (each document's best hit).

    Args:
        exclude_self: for image queries that are themselves indexed, drop the query's own document
            (matched by file path) from its ranking, so it cannot count as its own hit.
    """
    query = Query(text=q.text, image=ImageAsset(path=q.image) if q.image else None)
    hits = searcher.search_documents(query, depth + 1, retriever=retriever)
    if exclude_self and q.image:
        hits = [h for h in hits if h.source != q.image]
    return hits[:depth]
