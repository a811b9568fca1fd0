"""The CLI through click's CliRunner: exit codes, --json output, errors as messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from mmrag.cli import EXIT_PARTIAL, main

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "notes.txt").write_text("The lift on the east side was serviced on Monday.\n")
    Image.new("RGB", (64, 64), (220, 30, 30)).save(root / "red.png")
    return root


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--profile", "offline"], catch_exceptions=False)
    return result.exit_code, result.stdout


def test_ingest_search_status_delete_roundtrip(corpus: Path) -> None:
    code, out = _run("ingest", str(corpus), "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["indexed"] == 2 and summary["failed"] == []

    code, out = _run("search", "lift serviced", "--retriever", "text", "--k", "1", "--json")
    assert code == 0 and json.loads(out)[0]["doc_id"] == "notes.txt"

    code, out = _run("search", "--image", str(corpus / "red.png"), "--modality", "image", "--json")
    hits = json.loads(out)
    assert code == 0 and hits[0]["doc_id"] == "red.png" and hits[0]["modality"] == "image"

    code, out = _run("status", "--json")
    status = json.loads(out)
    assert status["documents"] == {"done": 2} and status["records"] == {"clip": 2, "text": 1}

    code, out = _run("delete", "notes.txt", "--json")
    assert code == 0 and json.loads(out) == {"deleted": 1}
    code, out = _run("status", "--json")
    assert json.loads(out)["records"] == {"clip": 1, "text": 0}


def test_partial_failure_exits_3_and_names_the_file(corpus: Path) -> None:
    (corpus / "bad.png").write_bytes(b"not an image")
    code, out = _run("ingest", str(corpus))
    assert code == EXIT_PARTIAL
    assert "FAILED" in out and "bad.png" in out


def test_errors_are_messages_not_tracebacks(corpus: Path) -> None:
    _run("ingest", str(corpus))  # an unknown doc id of a collection that exists (an unknown collection: exit 2)
    result = CliRunner().invoke(main, ["delete", "nope.txt", "--profile", "offline"])
    assert result.exit_code == 1 and "Unknown doc id" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["search", "x", "--collection", "bad name!"])
    assert result.exit_code == 1 and "Invalid collection name" in result.stderr


def test_eval_retrieval_reports_metrics(corpus: Path, tmp_path: Path) -> None:
    _run("ingest", str(corpus))
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps({"id": "q1", "query": "east lift service", "relevant": ["notes.txt"]}) + "\n")
    code, out = _run("eval", "retrieval", str(dataset), "--retriever", "bm25", "--k", "1", "--json")
    report = json.loads(out)
    assert code == 0 and report["metrics"]["precision@1"] == 1.0 and report["metrics"]["mrr"] == 1.0
