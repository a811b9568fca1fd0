"""`mmrag ask` with the offline SmolLM2 model over the sample corpus (issue 3, acceptance 5)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.conftest import SAMPLE_CORPUS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("gguf")
    path = str(tmp_path_factory.mktemp("ask") / "data")
    result = CliRunner().invoke(main, ["ingest", str(SAMPLE_CORPUS), "--profile", "offline", "--data-dir", path])
    assert result.exit_code == 0, result.output
    return path


def _ask(data_dir: str, question: str, *extra: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, ["ask", question, "--profile", "offline", "--data-dir", data_dir, "--json", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_answerable_question_cites_the_right_document(data_dir: str) -> None:
    answer = _ask(data_dir, "When does the building close on weekdays?")
    assert not answer["abstained"]
    assert "18" in answer["text"]
    assert answer["citations"] and answer["citations"][0]["doc_id"] == "visitor-faq.html"


def test_unanswerable_question_says_it_does_not_know(data_dir: str) -> None:
    answer = _ask(data_dir, "Who won the 1998 football world cup?")
    assert answer["abstained"] and "don't know" in answer["text"]


def test_verify_runs_the_detector_on_the_answer(data_dir: str) -> None:
    answer = _ask(data_dir, "When does the building close on weekdays?", "--verify")
    assert not answer["abstained"] and "18" in answer["text"]
    verdict = answer["verification"]
    assert verdict is not None and verdict["mode"] == "mark" and 0.0 <= verdict["score"] <= 1.0
    assert all(u["text"] in answer["text"] for u in verdict["unsupported"])
