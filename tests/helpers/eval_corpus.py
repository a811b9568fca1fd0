"""Fixtures for the evaluation suite: the sample corpus in a fast (hashing-fake) knowledge base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLE_CORPUS

#: Queries over ingest/sample_corpus with their relevant documents (doc ids are paths in the corpus).
SAMPLE_QUERIES = [
    {"id": "hours", "query": "When does the building close on weekdays?", "relevant": ["visitor-faq.html"],
     "reference": "It closes at 18:00 on weekdays."},
    {"id": "parking", "query": "Where is visitor parking?", "relevant": ["visitor-faq.html"]},
    {"id": "lift", "query": "When was the east lift back in service?", "relevant": ["maintenance-log.txt"]},
    {"id": "first-aid", "query": "Which sign marks a first-aid kit?",
     "relevant": ["shapes-handbook.md", "images/green-circle.jpg"]},
    {"id": "exit-price", "query": "How much does the exit sign cost?", "relevant": ["signs-catalogue.pdf"]},
    {"id": "red-circle", "query": "a red circle", "relevant": ["images/red-circle.png", "shapes-handbook.md"]},
    {"id": "triangle-image", "query_image": "corpus/images/yellow-triangle.png",
     "relevant": ["images/yellow-triangle.png", "shapes-handbook.md", "visitor-faq.html"]},
]


def write_dataset(folder: Path, rows: list[dict[str, Any]] = SAMPLE_QUERIES) -> Path:
    """Write ``rows`` as ``folder/dataset.jsonl``."""
    path = folder / "dataset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sample_corpus(tmp_path: Path) -> Path:
    """A private copy of the sample corpus (tests add or delete files in it)."""
    return Path(shutil.copytree(SAMPLE_CORPUS, tmp_path / "corpus"))


@pytest.fixture(scope="package")
def sample_kb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample corpus ingested once with the offline profile: (folder, data dir).

    The folder holds ``corpus/`` and ``dataset.jsonl`` (:data:`SAMPLE_QUERIES`); the collection is
    ``sample``. Tests that change the collection must copy the data dir first.
    """
    from click.testing import CliRunner

    from mmrag.cli import main

    root = tmp_path_factory.mktemp("sample-kb")
    shutil.copytree(SAMPLE_CORPUS, root / "corpus")
    data_dir = root / "data"
    result = CliRunner().invoke(main, ["ingest", str(root / "corpus"), "--profile", "offline", "--data-dir",
                                       str(data_dir), "--collection", "sample", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    write_dataset(root)
    return root, data_dir
