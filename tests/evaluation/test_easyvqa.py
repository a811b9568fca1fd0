"""Acceptance 4: offline profile, easy-vqa TEST split ingested through the CLI.

text -> image precision@5 >= 0.80 over the 24 colour-shape queries, and image -> image
precision@5 >= 0.80 (same colour and shape; the query image itself excluded). The offline model
never saw the test split: it is trained on the train split only (eval/offline_clip/train.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.long]


@pytest.fixture(scope="module")
def easyvqa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("easy_vqa")
    out = tmp_path_factory.mktemp("easyvqa")
    subprocess.run([sys.executable, "-m", "eval.datasets.easyvqa", "--split", "test", "--out", str(out)],
                   check=True, capture_output=True, cwd=REPO)
    data_dir = out / "data"
    result = CliRunner().invoke(main, ["ingest", str(out / "images"), "--profile", "offline", "--data-dir",
                                       str(data_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 1000
    return out, data_dir


def _p_at_5(easyvqa: tuple[Path, Path], dataset: str) -> tuple[float, int]:
    out, data_dir = easyvqa
    result = CliRunner().invoke(main, ["eval", "retrieval", str(out / dataset), "--retriever", "clip", "--k", "5",
                                       "--profile", "offline", "--data-dir", str(data_dir), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    print(dataset, report["metrics"])
    return report["metrics"]["precision@5"], report["n_queries"]


def test_text_to_image_precision_at_5(easyvqa: tuple[Path, Path]) -> None:
    p5, n = _p_at_5(easyvqa, "text_to_image.jsonl")
    assert n == 24
    assert p5 >= 0.80


def test_image_to_image_precision_at_5(easyvqa: tuple[Path, Path]) -> None:
    p5, n = _p_at_5(easyvqa, "image_to_image.jsonl")
    assert n == 1000
    assert p5 >= 0.80


def test_eval_run_image_queries_render_with_thumbnails(easyvqa: tuple[Path, Path], tmp_path: Path) -> None:
    """`mmrag eval run` over the 1,000 image queries writes the three reports; the HTML renders in
    headless Chromium with its summary table, plots and thumbnails (evaluation suite, acceptance 1)."""
    pytest.importorskip("ragas")
    from tests.helpers.eval_run import eval_run
    from tests.helpers.chromium import assert_renders

    out, data_dir = easyvqa
    report = eval_run(out / "image_to_image.jsonl", data_dir, "default", tmp_path / "out", "--retriever", "clip",
                      "--k", "5", "--no-answer")
    print({k: (m["mean"], m["n"]) for k, m in report["metrics"].items()}, report["timings"])
    assert report["metrics"]["precision@5"]["n"] == 1000 and report["metrics"]["precision@5"]["mean"] >= 0.80
    assert report["metrics"]["context_precision"]["producer"] == "ragas (ids, no LLM)"
    html = tmp_path / "out" / "report.html"
    assert html.stat().st_size < 5_000_000  # thumbnails stay small enough to open anywhere
    assert_renders(html, tmp_path)


def test_eval_run_text_queries_with_answers(easyvqa: tuple[Path, Path], tmp_path: Path) -> None:
    """The 24 text->image queries, two of them answered offline and checked by the offline detector."""
    pytest.importorskip("ragas")
    from tests.helpers.eval_run import eval_run
    from tests.helpers.chromium import assert_renders

    out, data_dir = easyvqa
    report = eval_run(out / "text_to_image.jsonl", data_dir, "default", tmp_path / "out", "--retriever", "clip",
                      "--k", "5", "--sample", "2", "--seed", "0")
    print({k: (m["mean"], m["n"]) for k, m in report["metrics"].items()}, report["counts"], report["timings"])
    assert report["counts"]["queries"] == 24 and report["counts"]["answered"] == 2
    assert report["metrics"]["precision@5"]["mean"] >= 0.80
    assert report["metrics"]["abstention_rate"]["n"] == 2
    assert report["config"]["hallucination_producer"] == "offline detector"
    assert_renders(tmp_path / "out" / "report.html", tmp_path)
