"""Smoke test of eval/bench/query.py on a tiny index: it ingests, times every retriever and the naive
baseline, and reports. Never asserts times or ratios (they depend on the machine and its load);
the full run and its numbers are in the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]  # 54 s on CI: models, an index and a server


def test_query_bench_runs_end_to_end_on_a_small_index(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(REPO / "eval" / "bench" / "query.py"), "--chunks", "80", "--queries", "25",
                          "--clients", "2", "--seconds", "2", "--workdir", str(tmp_path / "w"), "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["index"]["indexed"] == 80 and report["index"]["text_records"] == 80
    assert set(report["latency"]["mmrag"]) == {"hybrid", "clip", "text", "bm25"}
    assert report["latency"]["mmrag"]["hybrid"]["n"] == 25 and report["latency"]["naive"]["hybrid"]["n"] == 25
    assert report["load"]["errors"] == 0 and report["load"]["requests"] > 0, report["load"]
    # Hybrid with the rerank stage (top 20), in the same run as hybrid without it.
    rerank = report["rerank"]
    assert rerank["depth"] == 20 and rerank["hybrid"]["n"] == 25 and rerank["stage"]["n"] == 25, rerank
    assert "rerank stage" in run.stdout
    assert "hybrid p50" in run.stdout
