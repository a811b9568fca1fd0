"""Issue 14, acceptance 1 and 2: offline answers on the HaluEval development set, through the real CLI.

250 passages ingested; 250 questions answerable from them and 250 whose passages were left out. The
offline default (extractive answers, calibrated gate) must refuse >= 0.85 of the unanswerable
questions, contain the reference in >= 0.60 of the answerable ones, and cite the gold passage in
>= 0.80 of those it answers; `--fail-under` gates each figure and the three reports carry them.
The gate was fitted on this set (eval/calibrate_abstention.py), so these are development figures.
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


def test_offline_answers_on_the_development_set(tmp_path: Path) -> None:
    pytest.importorskip("ragas")
    from tests.helpers.eval_run import eval_run

    out = tmp_path / "halueval"
    subprocess.run([sys.executable, "-m", "eval.datasets.halueval", str(shared("halueval_qa")), "--out", str(out)],
                   check=True, capture_output=True, cwd=REPO)
    data_dir = out / "data"
    result = CliRunner().invoke(main, ["ingest", str(out / "corpus"), "--profile", "offline", "--data-dir",
                                       str(data_dir), "--collection", "halueval", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 250

    report = eval_run(out / "dev.jsonl", data_dir, "halueval", tmp_path / "run",
                      "--fail-under", "abstention_recall=0.85", "--fail-under", "contains_reference=0.60",
                      "--fail-under", "cites_gold=0.80")
    metrics = report["metrics"]
    print({k: (round(m["mean"], 4), m["n"]) for k, m in metrics.items()}, report["timings"])
    assert metrics["abstention_recall"]["n"] == 250 and metrics["abstention_recall"]["mean"] >= 0.85
    assert metrics["contains_reference"]["n"] == 250 and metrics["contains_reference"]["mean"] >= 0.60
    assert metrics["cites_gold"]["mean"] >= 0.80
    assert report["config"]["answer_mode"] == "extractive"
    refused = [r for r in report["rows"] if r["answer"]["abstained"]]
    assert refused and all(r["answer"]["guard"] == "abstained:calibrated" and r["answer"]["abstention"]
                           for r in refused)
