"""ragas is optional: `import mmrag` never loads it, and a run without it says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.errors import MissingDependencyError
from tests.helpers.eval_corpus import write_dataset


def test_importing_mmrag_does_not_import_ragas_or_litellm() -> None:
    code = ("import sys, mmrag, mmrag.evaluation, mmrag.cli; "
            "print(sorted(m for m in ('ragas', 'litellm', 'instructor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_missing_ragas_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mmrag.evaluation.ragas_metrics import import_ragas

    monkeypatch.setitem(sys.modules, "ragas", None)  # what an install without the extra looks like
    with pytest.raises(MissingDependencyError, match=r"pip install 'mmrag\[eval\]'"):
        import_ragas()
    result = CliRunner().invoke(main, ["eval", "run", str(write_dataset(tmp_path)), "--out", str(tmp_path / "o"),
                                       "--no-answer", "--profile", "offline"])
    assert result.exit_code == 1 and "mmrag[eval]" in result.output
