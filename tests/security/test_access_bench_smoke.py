"""Smoke test of ``eval/bench/query.py --access`` (issue 28, acceptance line 2's latency half) on a tiny index.

Asserts only that part 1c runs and reports (times depend on the machine); the lead measures the
10k figure with the command in the README. Long: it loads the real models and ingests twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.long


def test_query_bench_times_a_restricted_caller(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(REPO / "eval" / "bench" / "query.py"), "--chunks", "40", "--queries", "12",
                          "--no-load", "--no-rerank", "--access", "--workdir", str(tmp_path / "w"), "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stdout + run.stderr
    access = json.loads(out.read_text())["access"]
    assert access["labelled_records"] == 40
    assert access["unlabelled_hybrid"]["n"] == 12 and access["caller_hybrid"]["n"] == 12
    assert access["ratio_p50"] > 0 and "access: hybrid p50" in run.stdout
