"""`make demo` (ingest/demo.py) on the offline profile ends with a cited answer and an honest abstention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_ends_with_an_answer_and_its_citations(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    env = {**os.environ, "MMRAG_PROFILE": "offline", "MMRAG_DATA_DIR": str(tmp_path / "demo")}
    run = subprocess.run([sys.executable, str(REPO / "ingest" / "demo.py")], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "ingested ingest/sample_corpus: indexed 8" in out
    answers = out.split(">> answers", 1)[1]
    first, second = answers.split("Q: Who won", 1)
    assert "A: " in first and "18" in first and "[1] visitor-faq.html" in first
    # Issue 25: the answer is the sentence that answers, never the page's heading or the FAQ's question.
    reply = first.split("A: ", 1)[1].splitlines()[0]
    assert "18:00" in reply and "Visitor FAQ" not in reply and "?" not in reply, reply
    assert "I don't know" in second
