"""Acceptance 4: with a judge on a local OpenAI-compatible server (a test fixture), ragas' LLM metrics
run end to end and land in the reports, each named by its producer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.helpers.judge_server import JudgeServer

pytestmark = pytest.mark.slow
pytest.importorskip("ragas")
JUDGE = "openai/test-judge"



@pytest.fixture
def judge_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[JudgeServer]:
    with JudgeServer() as server:
        # The answer model (openai/test-answerer) reaches the same server through litellm's env vars.
        monkeypatch.setenv("OPENAI_API_BASE", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def _run(sample_kb: tuple[Path, Path], out: Path, *extra: str) -> Any:
    root, data_dir = sample_kb
    dataset = root / "dataset.jsonl"
    return CliRunner().invoke(main, ["eval", "run", str(dataset), "--out", str(out), "--k", "5", "--profile", "offline",
                                     "--data-dir", str(data_dir), "--collection", "sample", "--model",
                                     "openai/test-answerer", "--json", *extra], catch_exceptions=False)


def test_judge_metrics_land_in_the_reports(sample_kb: tuple[Path, Path], judge_server: JudgeServer,
                                           tmp_path: Path) -> None:
    result = _run(sample_kb, tmp_path / "out", "--judge", JUDGE, "--judge-api-base", judge_server.url,
                  "--judge-vision", "--judge-timeout", "20")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["answered"] == 6 and report["counts"]["judged"] == 6
    assert [r for r in report["rows"] if r["errors"]] == []
    metrics = report["metrics"]
    for name in ("llm_context_precision", "faithfulness", "response_relevancy", "multimodal_faithfulness",
                 "multimodal_relevance", "hallucination_rate"):
        assert metrics[name]["producer"] == f"judge: {JUDGE}", name
        assert metrics[name]["n"] >= 1 and metrics[name]["mean"] is not None, name
    assert metrics["context_precision"]["producer"] == "ragas (ids, no LLM)"
    # The server declares one statement of the parking answer unsupported: that answer is hallucinated.
    verdicts = {r["id"]: r["hallucination"]["hallucinated"] for r in report["rows"] if r["hallucination"]}
    assert verdicts == {"hours": False, "parking": True, "lift": False, "first-aid": False, "exit-price": False,
                        "red-circle": False}
    assert metrics["hallucination_rate"]["mean"] == pytest.approx(1 / 6)
    parking = next(r for r in report["rows"] if r["id"] == "parking")
    assert parking["scores"]["faithfulness"] == pytest.approx(0.5)
    assert {"StatementGeneratorOutput", "NLIStatementOutput", "ContextPrecisionOutput", "AnswerRelevanceOutput",
            "MultiModalFaithfulnessOutput", "MultiModalRelevanceOutput"} <= set(judge_server.requests)
    assert judge_server.images >= 1  # image hits went to the multimodal judge inline
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"judge: {JUDGE}" in html and "faithfulness" in html and "response_relevancy" in html
    assert f"judge: {JUDGE}" in (tmp_path / "out" / "report.md").read_text()


def test_a_failing_judge_is_recorded_per_query(sample_kb: tuple[Path, Path], judge_server: JudgeServer,
                                               tmp_path: Path) -> None:
    # Nothing listens on the judge's port: every judge call fails fast, the run still reports.
    result = _run(sample_kb, tmp_path / "out", "--judge", JUDGE, "--judge-api-base", "http://127.0.0.1:9/v1",
                  "--judge-timeout", "5", "--limit", "2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = {e["stage"] for r in report["rows"] for e in r["errors"]}
    assert "judge:faithfulness" in stages
    assert all("UpstreamError" in e["message"] or "Timeout" in e["message"] for r in report["rows"] for e in r["errors"])
    assert report["metrics"]["faithfulness"]["n"] == 0 and report["metrics"]["ndcg@10"]["n"] == 2
