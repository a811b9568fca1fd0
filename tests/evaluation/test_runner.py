"""The evaluation runner, reports and comparison on the hashing fake (fast; no model, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ragas")

from mmrag.answering import Answerer  # noqa: E402
from mmrag.errors import InvalidInputError  # noqa: E402
from mmrag.evaluation import (  # noqa: E402
    EvalConfig,
    check_gates,
    compare_runs,
    load_dataset,
    load_report,
    parse_gates,
    run_evaluation,
    write_reports,
)
from mmrag.indexing import Indexer  # noqa: E402
from mmrag.llms.echo import EchoChatModel  # noqa: E402
from mmrag.retrieval import Searcher  # noqa: E402
from tests.helpers.eval_corpus import write_dataset  # noqa: E402


class KeywordDetector:
    """A fake detector: an answer is hallucinated when it says "moon"."""

    def verify(self, context: Any, answer: str, question: str | None = None) -> Any:
        bad = "moon" in answer.lower()
        sentence = SimpleNamespace(text=answer, supported=not bad, support=0.2 if bad else 1.0, reasons=("says moon",))
        return SimpleNamespace(score=1.0 if bad else 0.0, hallucinated=bad, sentences=(sentence,))


@pytest.fixture
def kb(hashing_kb: Any, sample_corpus: Path) -> Any:
    Indexer(hashing_kb).ingest([sample_corpus])
    return hashing_kb


def test_retrieval_only_run_scores_every_query_and_names_producers(kb: Any, tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path))
    run = run_evaluation(Searcher(kb), queries, EvalConfig(k=5, retriever="clip", answer=False), dataset="sample")
    assert len(run.rows) == 7 and run.counts["answered"] == 0
    assert set(run.metrics) == {"precision@5", "recall@5", "mrr", "ndcg@10", "context_precision", "context_recall"}
    assert run.metrics["context_precision"]["producer"] == "ragas (ids, no LLM)"
    assert run.metrics["ndcg@10"]["producer"].startswith("mmrag rank metrics")
    for row in run.rows:
        # ragas' ID precision is |retrieved & relevant| / |retrieved|: precision@k when k distinct docs come back.
        assert row["scores"]["context_precision"] == pytest.approx(row["scores"]["precision@5"])
        assert row["scores"]["context_recall"] == pytest.approx(row["scores"]["recall@5"])
    image_row = next(r for r in run.rows if r["id"] == "triangle-image")
    assert all(item["doc_id"] != "images/yellow-triangle.png" for item in image_row["retrieved"])  # not its own hit


def test_reports_are_written_and_round_trip(kb: Any, tmp_path: Path) -> None:
    run = run_evaluation(Searcher(kb), load_dataset(write_dataset(tmp_path)),
                         EvalConfig(k=5, retriever="clip", answer=False), dataset="sample")
    paths = write_reports(run, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.html"}
    data = json.loads(paths["json"].read_text())
    assert data["metrics"]["ndcg@10"]["n"] == 7 and len(data["rows"]) == 7
    assert data["versions"]["ragas"] == "0.4.3"
    assert load_report(tmp_path / "out").metrics == run.metrics
    md = paths["markdown"].read_text()
    assert "| ndcg@10 |" in md and "Produced by" in md
    html = paths["html"].read_text()
    assert 'id="summary"' in html and "<svg" in html and 'class="thumb"' in html and "data:image/png;base64," in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_untrusted_text_is_escaped_everywhere(hashing_kb: Any, sample_corpus: Path, tmp_path: Path) -> None:
    (sample_corpus / "evil.md").write_text("# Evil\n\n<script>alert('doc')</script> <img src=x onerror=alert(1)> closing time\n")
    Indexer(hashing_kb).ingest([sample_corpus])
    rows = [{"id": "<b>x</b>", "query": "<script>alert('q')</script> closing time", "relevant": ["evil.md"]}]
    run = run_evaluation(Searcher(hashing_kb), load_dataset(write_dataset(tmp_path, rows)),
                         EvalConfig(k=10, retriever="bm25", answer=False))
    assert any(i["doc_id"] == "evil.md" for i in run.rows[0]["retrieved"])
    html = write_reports(run, tmp_path / "out")["html"].read_text()
    assert "<script" not in html and "<img src=x" not in html and "<b>x</b>" not in html
    # Jinja2's autoescape (markupsafe) writes a quote as &#39;: the same character as html.escape's &#x27;.
    assert "&lt;script&gt;alert(&#39;doc&#39;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#39;q&#39;)" in html
    assert "<script" not in (tmp_path / "out" / "report.md").read_text()


def test_answers_sample_and_offline_hallucination_rate(kb: Any, tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path))
    model = EchoChatModel()
    # Echo answers are checked by the grounding guard: the first is grounded in the FAQ, the second
    # is made of context words too (so the guard lets it through), the detector flags "moon".
    model.enqueue("The building closes at 18:00 on weekdays [1].", "The moon closes the building [1].",
                  "I don't know.")
    config = EvalConfig(k=5, retriever="bm25", answer=True, sample=3, seed=7)
    run = run_evaluation(Searcher(kb), queries, config, answerer=Answerer(model, k=5), detector=KeywordDetector())
    answered = [r for r in run.rows if r["answer"] is not None]
    assert len(answered) == 3 and run.counts["answered"] == 3
    assert "sampled with seed 7" in run.counts["answer_selection"]
    rerun = run_evaluation(Searcher(kb), queries, config, answerer=Answerer(EchoChatModel(), k=5),
                           detector=KeywordDetector())
    assert [r["id"] for r in rerun.rows if r["answer"]] == [r["id"] for r in answered]  # the seed repeats
    hr = run.metrics["hallucination_rate"]
    assert hr["producer"] == "offline detector" and hr["higher_is_better"] is False
    assert run.metrics["abstention_rate"]["n"] == 3
    assert all(r["answer"]["text"] for r in answered)


def test_image_only_queries_are_never_answered(kb: Any, tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path))
    run = run_evaluation(Searcher(kb), queries, EvalConfig(k=5, retriever="clip"), answerer=Answerer(EchoChatModel()))
    image_row = next(r for r in run.rows if r["id"] == "triangle-image")
    assert image_row["answer"] is None and run.counts["answered"] == 6


def test_per_query_failures_are_recorded_not_raised(kb: Any, tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path))
    # The text retriever cannot read an image query: that query fails alone.
    run = run_evaluation(Searcher(kb), queries, EvalConfig(k=5, retriever="text", answer=False))
    failed = [r for r in run.rows if r["errors"]]
    assert [r["id"] for r in failed] == ["triangle-image"]
    assert failed[0]["errors"][0]["stage"] == "retrieval" and run.counts["failed_queries"] == 1


def test_compare_names_queries_that_lost_relevant_documents(kb: Any, tmp_path: Path) -> None:
    queries = load_dataset(write_dataset(tmp_path))
    config = EvalConfig(k=5, retriever="bm25", answer=False)
    base = run_evaluation(Searcher(kb), queries, config)
    Indexer(kb).delete(["visitor-faq.html"])
    new = run_evaluation(Searcher(kb), queries, config)
    result = compare_runs(base, new)
    had = {r["id"] for r in base.rows if any(i["relevant"] and i["doc_id"] == "visitor-faq.html" for i in r["retrieved"])}
    assert had and set(result.lost) == had
    assert all(docs == ["visitor-faq.html"] for docs in result.lost.values())
    assert result.regressed and result.metrics["recall@5"]["regressed"]
    assert not compare_runs(base, base).regressed


def test_gates() -> None:
    gates = parse_gates(["precision@10=0.3", "hallucination_rate=0.2"])
    run = SimpleNamespace(metrics={
        "precision@10": {"mean": 0.25, "higher_is_better": True},
        "hallucination_rate": {"mean": 0.1, "higher_is_better": False}})
    results = check_gates(run, gates)  # type: ignore[arg-type]
    assert [r.passed for r in results] == [False, True]
    assert "FAILED" in results[0].describe()
    assert not check_gates(run, parse_gates(["ndcg@10=0.1"]))[0].passed  # a missing metric fails its gate
    with pytest.raises(InvalidInputError, match="METRIC=VALUE"):
        parse_gates(["precision@10>0.3"])
