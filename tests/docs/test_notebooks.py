"""Both walkthrough notebooks run top to bottom, as a reader would run them (offline profile).

nbclient is not a dependency (it needs a Jupyter kernel), so the code cells run in order in one
namespace, in the notebooks' folder, with stdout captured. The notebooks assert their own results
(documents indexed, nDCG, the regression the evaluation walkthrough plants); this test also checks
that each printed what its prose promises, so a notebook emptied of its cells cannot pass.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

#: Each notebook and lines its run must print (search hits; the evaluation's metrics and its regression).
NOTEBOOKS = {
    "quickstart.ipynb": ["yellow-triangle.png", "signs-catalogue.pdf"],
    "evaluation.ipynb": ["ndcg@10", "REGRESSED", "lost relevant documents"],
}


def run_cells(notebook: Path) -> int:
    """Execute the code cells of ``notebook`` in order in one namespace; return how many ran."""
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {"__name__": "__notebook__"}
    ran = 0
    for n, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])
            exec(compile(code, f"{notebook.name}[cell {n}]", "exec"), namespace)  # noqa: S102
            ran += 1
    return ran


def test_every_notebook_is_a_known_walkthrough() -> None:
    assert sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    notebook = REPO / "notebooks" / name
    assert notebook.is_file(), f"{notebook} is missing"
    monkeypatch.chdir(notebook.parent)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the notebooks set it too; this way it is undone after
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # their mkdtemp() data dirs land here
    assert run_cells(notebook) >= 3
    printed = capsys.readouterr().out
    missing = [line for line in NOTEBOOKS[name] if line not in printed]
    assert not missing, f"{name} ran but never printed {missing}:\n{printed[-2000:]}"
