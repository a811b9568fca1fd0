"""`mmrag eval retrieval` on a dataset with unanswerable questions (issue 27: the docs' own example crashed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.errors import InvalidInputError
from mmrag.evaluation.dataset import EvalQuery
from mmrag.evaluation.ranking import evaluate_retrieval
from mmrag.indexing import Indexer
from mmrag.retrieval import Searcher


def test_unanswerable_queries_are_left_out_of_the_rank_metrics(hashing_kb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As `eval run` does: they have no gold document, so recall would divide by zero (it raised)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "hours.txt").write_text("The building closes at 18:00 on weekdays.\n")
    (corpus / "signs.txt").write_text("A yellow triangle warns of a wet floor.\n")
    Indexer(hashing_kb).ingest([corpus])
    queries = [EvalQuery(id="hours", relevant=frozenset({"hours.txt"}), text="When does the building close?"),
               EvalQuery(id="cup", relevant=frozenset(), text="Who won the 1998 world cup?", answerable=False)]
    report = evaluate_retrieval(Searcher(hashing_kb), queries, retriever="bm25", k=5)
    assert [row["id"] for row in report.per_query] == ["hours"]
    assert report.metrics["recall@5"] == 1.0 and report.metrics["mrr"] == 1.0

    with pytest.raises(InvalidInputError, match="no query with relevant documents"):
        evaluate_retrieval(Searcher(hashing_kb), queries[1:], retriever="bm25", k=5)
