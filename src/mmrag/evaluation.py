"""Retrieval evaluation at document level: precision@k, recall@k, MRR and nDCG@10.

Dataset lines (JSONL): ``{"id": ..., "query": "text"}`` or ``{"id": ..., "query_image": "path"}``
plus ``"relevant": [doc ids]``. Image paths are relative to the dataset file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.retrieval import Searcher
from mmrag.types import ImageAsset, Query


@dataclass(frozen=True)
class EvalQuery:
    """One dataset line."""

    id: str
    relevant: frozenset[str]
    text: str | None = None
    image: str | None = None


def load_dataset(path: Path) -> list[EvalQuery]:
    """Read and validate a retrieval dataset. Errors name the file and line."""
    if not path.is_file():
        raise NotFoundError(f"Dataset not found: {path}")
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InvalidInputError(f"{path}:{n}: each line must be a JSON object")
            text, image = row.get("query"), row.get("query_image")
            if not text and not image:
                raise InvalidInputError(f"{path}:{n}: needs a 'query' (text) or 'query_image' (path)")
            rel = row.get("relevant")
            if not isinstance(rel, list) or not rel:
                raise InvalidInputError(f"{path}:{n}: 'relevant' must be a non-empty list of doc ids")
            if image:
                image = os.path.abspath(path.parent / image)
            out.append(EvalQuery(id=str(row.get("id", n)), relevant=frozenset(map(str, rel)), text=text, image=image))
    if not out:
        raise InvalidInputError(f"{path}: no queries")
    return out


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
    """Search each query and score its document ranking.

    Args:
        exclude_self: for image queries that are themselves indexed, drop the query's own document
            (matched by file path) from its ranking, so it cannot count as its own hit.
    """
    depth = max(k, 10)
    rows = []
    for q in queries:
        query = Query(text=q.text, image=ImageAsset(path=q.image) if q.image else None)
        hits = searcher.search_documents(query, depth + 1, retriever=retriever)
        if exclude_self and q.image:
            hits = [h for h in hits if h.source != q.image]
        ranked = [h.doc_id for h in hits][:depth]
        rows.append({
            "id": q.id, f"precision@{k}": precision_at(ranked, q.relevant, k),
            f"recall@{k}": recall_at(ranked, q.relevant, k), "mrr": reciprocal_rank(ranked, q.relevant),
            "ndcg@10": ndcg_at(ranked, q.relevant, 10), "retrieved": ranked[:k],
        })
    keys = [f"precision@{k}", f"recall@{k}", "mrr", "ndcg@10"]
    metrics = {key: sum(r[key] for r in rows) / len(rows) for key in keys}
    return RetrievalReport(retriever=retriever, k=k, metrics=metrics, per_query=rows)
