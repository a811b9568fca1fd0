"""`mmrag eval run` for the acceptance tests that reuse their module's ingested collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mmrag.cli import main


def eval_run(dataset: Path, data_dir: Path, collection: str, out: Path, *extra: str) -> dict[str, Any]:
    """Run ``mmrag eval run --json`` offline, check the three reports exist, return report.json."""
    result = CliRunner().invoke(main, ["eval", "run", str(dataset), "--out", str(out), "--profile", "offline",
                                       "--data-dir", str(data_dir), "--collection", collection, "--json", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("report.html", "report.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    return json.loads((out / "report.json").read_text())
