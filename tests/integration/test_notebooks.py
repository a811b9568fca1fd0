"""Every notebook runs top to bottom (code cells executed in order, in one namespace)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(notebook: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO / "notebooks")
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {"__name__": "__notebook__"}
    for n, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])
            exec(compile(code, f"{notebook.name}[cell {n}]", "exec"), namespace)  # noqa: S102
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_both_walkthroughs_are_executed() -> None:
    """The quickstart and the evaluation walkthrough are both run by test_notebook_runs (in CI too)."""
    names = {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
    assert {"quickstart.ipynb", "evaluation.ipynb"} <= names
