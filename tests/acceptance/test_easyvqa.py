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

pytestmark = pytest.mark.slow


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
