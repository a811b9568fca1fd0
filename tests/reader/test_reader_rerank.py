"""The offline reader reranks SciFact (never trained on) better than the first stage it is given.

Issue 25: reranking hybrid's top 30 must raise nDCG@10 on SciFact's train queries by at least 0.01.
The first stage is computed without an index by ``eval/reader/evaluate.py`` (BM25 + all-MiniLM-L6-v2,
fused by reciprocal rank, as ``--retriever hybrid`` does). This is the trained cross-encoder's
relevance head; ``--rerank offline`` is the sentence reranker (``mmrag.rerankers.sentences``, chosen
because this head loses to it), measured through the CLI in ``docs/reranking.md``. The near-miss
answerability set is scored too: the reader must separate answerable from near-miss questions on
data it never read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, shared

pytestmark = [pytest.mark.slow, pytest.mark.shared, pytest.mark.long]


@pytest.mark.xfail(strict=True, reason="issue 25 open: the shipped reader lowers SciFact nDCG@10 (0.630 -> 0.496 on 60 "
                   "hybrid queries); strict, so a reader that meets the line turns this red until the mark goes")
def test_rerank_raises_scifact_ndcg(tmp_path: Path) -> None:
    data = shared("scifact").parent
    out = tmp_path / "scifact.json"
    subprocess.run([sys.executable, "-m", "eval.reader.evaluate", "scifact", "--data", str(data), "--cache",
                    str(tmp_path), "--depth", "30", "--json", str(out)], check=True, cwd=REPO)
    figures = json.loads(out.read_text())
    first, reranked = figures["hybrid/first"]["ndcg@10"], figures["hybrid/rerank"]["ndcg@10"]
    assert reranked >= first + 0.01, figures


@pytest.mark.xfail(strict=True, reason="issue 25 open: near-miss answerability ROC AUC is 0.70 with the shipped reader")
def test_answerability_separates_near_misses(tmp_path: Path) -> None:
    source = shared("halueval_qa")
    subprocess.run([sys.executable, "-m", "eval.datasets.nearmiss", str(source), "--out", str(tmp_path)],
                   check=True, cwd=REPO)
    result = subprocess.run([sys.executable, "-m", "eval.reader.evaluate", "answerability", "--pairs",
                             str(tmp_path / "pairs.jsonl")], check=True, cwd=REPO, capture_output=True, text=True)
    auc = float(result.stdout.split("AUC ")[1].split()[0])
    assert auc >= 0.75, result.stdout
