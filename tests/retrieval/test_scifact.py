"""SciFact train queries (809), offline profile, document-level nDCG@10 through the real CLI.

Issue 2: `--retriever text` reaches 0.65 (all-MiniLM-L6-v2 over title + text scores 0.660 on this
split when measured independently). Issue 3: the hybrid fusion beats every single retriever and
reaches 0.72 (BM25 alone 0.696 and plain RRF of BM25 and MiniLM 0.719 when measured
independently). Issue 25: ``--rerank offline`` lifts BM25, and (a strict xfail while the issue is
open) is to lift the hybrid by 0.01. One ingest serves every retriever; the corpus is converted
with eval/datasets/beir.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.conftest import REPO, shared

pytestmark = [pytest.mark.slow, pytest.mark.shared, pytest.mark.long]


@pytest.fixture(scope="module")
def scifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    source = shared("scifact")
    out = tmp_path_factory.mktemp("scifact")
    subprocess.run([sys.executable, "-m", "eval.datasets.beir", str(source), "--split", "train", "--out", str(out)],
                   check=True, capture_output=True, cwd=REPO)
    data_dir = out / "data"
    result = CliRunner().invoke(main, ["ingest", str(out / "corpus"), "--profile", "offline", "--data-dir",
                                       str(data_dir), "--collection", "scifact", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 5183
    return out / "train.jsonl", data_dir


def _report(scifact: tuple[Path, Path], retriever: str, *extra: str) -> dict:
    dataset, data_dir = scifact
    result = CliRunner().invoke(main, ["eval", "retrieval", str(dataset), "--retriever", retriever, "--k", "10",
                                       "--profile", "offline", "--data-dir", str(data_dir), "--collection",
                                       "scifact", "--json", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_queries"] == 809
    print(retriever, *extra, report["metrics"], report.get("rerank"))
    return report


def _metrics(scifact: tuple[Path, Path], retriever: str) -> dict[str, float]:
    return _report(scifact, retriever)["metrics"]


@pytest.fixture(scope="module")
def ndcg(scifact: tuple[Path, Path]) -> dict[str, float]:
    return {r: _metrics(scifact, r)["ndcg@10"] for r in ("clip", "text", "bm25", "hybrid")}


def test_text_retriever_ndcg_at_10(ndcg: dict[str, float]) -> None:
    assert ndcg["text"] >= 0.65


def test_hybrid_beats_every_single_retriever_and_reaches_0_72(ndcg: dict[str, float]) -> None:
    assert ndcg["hybrid"] >= 0.72, ndcg
    for single in ("clip", "text", "bm25"):
        assert ndcg["hybrid"] > ndcg[single], ndcg


def test_eval_run_reports(scifact: tuple[Path, Path], tmp_path: Path) -> None:
    """`mmrag eval run` on all 809 train queries (answers for a seeded sample of 3) writes the three
    reports, and the HTML renders in headless Chromium (evaluation suite, acceptance 1)."""
    pytest.importorskip("ragas")
    from tests.helpers.eval_run import eval_run
    from tests.helpers.chromium import assert_renders

    dataset, data_dir = scifact
    report = eval_run(dataset, data_dir, "scifact", tmp_path / "out", "--retriever", "text", "--k", "10",
                      "--sample", "3", "--seed", "0")
    metrics, counts = report["metrics"], report["counts"]
    print({k: (m["mean"], m["n"]) for k, m in metrics.items()}, counts, report["timings"])
    assert metrics["ndcg@10"]["n"] == 809 and metrics["ndcg@10"]["mean"] >= 0.65
    assert counts["answered"] == 3 and "sampled with seed 0" in counts["answer_selection"]
    assert metrics["hallucination_rate"]["producer"] == "offline detector"
    assert metrics["abstention_rate"]["n"] == 3
    assert "| ndcg@10 |" in (tmp_path / "out" / "report.md").read_text()
    assert_renders(tmp_path / "out" / "report.html", tmp_path, thumbnails=False)


def test_offline_rerank_lifts_bm25(scifact: tuple[Path, Path]) -> None:
    """``--rerank offline`` (the bundled MiniLM reading each sentence, fused with the first stage) over
    BM25's top 30: measured 0.690 -> 0.711 nDCG@10; nothing in it is fitted to SciFact."""
    rerank = _report(scifact, "bm25", "--rerank", "offline")["rerank"]
    assert rerank["model"] == "offline" and rerank["depth"] == 30
    assert rerank["delta"]["ndcg@10"] >= 0.01, rerank
    assert rerank["delta"]["recall@10"] > 0, rerank


@pytest.mark.xfail(strict=True, reason="issue 25 open (blocked on training data): over the hybrid fusion the "
                   "offline reranker gives 0.729 -> 0.723; strict, so a reranker that meets the line shows")
def test_offline_rerank_lifts_hybrid_by_0_01(scifact: tuple[Path, Path]) -> None:
    """Issue 25, acceptance 1: ``--retriever hybrid --rerank offline`` at least 0.01 above hybrid."""
    rerank = _report(scifact, "hybrid", "--rerank", "offline")["rerank"]
    assert rerank["delta"]["ndcg@10"] >= 0.01, rerank
