"""eval/bench/against.py: one bench on two commits, interleaved, compared figure by figure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_against", REPO / "eval" / "bench" / "against.py")
against = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(against)  # type: ignore[union-attr]


def test_leaves_flattens_numbers_and_skips_flags_and_text() -> None:
    report = {"latency": {"hybrid": {"p50": 12.5, "n": 300}}, "ok": True, "name": "x", "runs": [1.0, 2]}
    assert dict(against.leaves(report)) == {"latency.hybrid.p50": 12.5, "latency.hybrid.n": 300.0,
                                            "runs[0]": 1.0, "runs[1]": 2.0}


def test_compare_flags_only_ratios_outside_both_sides_runs() -> None:
    base = [{"p50": 10.0, "rate": 100.0, "old": 1.0}, {"p50": 11.0, "rate": 104.0}]
    head = [{"p50": 10.5, "rate": 80.0}, {"p50": 10.2, "rate": 82.0, "new": 2.0}]
    rows = {r["figure"]: r for r in against.compare(base, head, [])}
    assert set(rows) == {"p50", "rate"}  # a figure one run lacks is not compared
    assert rows["p50"]["ratio"] == pytest.approx(10.35 / 10.5) and not rows["p50"]["separated"]
    assert rows["rate"]["ratio"] == pytest.approx(81.0 / 102.0) and rows["rate"]["separated"]
    assert rows["rate"]["spread"] == pytest.approx(4.0 / 102.0)
    assert [r["figure"] for r in against.compare(base, head, ["rat"])] == ["rate"]
    # Steady runs 0.1% apart do not overlap, but are not a change worth a flag.
    steady = against.compare([{"rss": 1000.0}, {"rss": 1000.0}], [{"rss": 1001.0}, {"rss": 1001.0}], [])
    assert not steady[0]["separated"]


def test_a_bench_that_is_not_in_eval_bench_is_refused() -> None:
    run = subprocess.run([sys.executable, str(REPO / "eval" / "bench" / "against.py"), "--base", "HEAD", "--",
                          "nosuch.py"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "name a bench script of eval/bench" in run.stderr


@pytest.mark.slow
@pytest.mark.long  # two small ingest benches, each loading the offline models
def test_against_head_runs_both_sides_and_reports_ratios(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    run = subprocess.run([sys.executable, str(REPO / "eval" / "bench" / "against.py"), "--base", "HEAD", "--reps", "1",
                          "--keys", "items_per_s", "--json", str(out), "--", "ingest.py", "--images", "8", "--texts",
                          "16", "--warmup", "2", "--threads", "1"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["base"] == "HEAD" and len(report["runs"]["base"]) == len(report["runs"]["head"]) == 1
    assert report["figures"] and all("items_per_s" in r["figure"] and r["ratio"] > 0 for r in report["figures"])
    assert "cpu: " in run.stdout and "head/base" in run.stdout
