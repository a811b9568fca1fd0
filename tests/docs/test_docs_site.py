"""The docs site builds with `mkdocs build --strict`: every page in the nav, every link and anchor good."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("mkdocs", reason="the docs extra (pip install 'mmrag[docs]'; make test installs it)")


def _build(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    result = _build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    pages = {p.relative_to(REPO / "docs").with_suffix("") for p in (REPO / "docs").rglob("*.md")}
    built = {p.parent.relative_to(tmp_path / "site") for p in (tmp_path / "site").rglob("index.html")}
    assert {Path("index") if p == Path("index") else p for p in pages} - {Path("index")} <= built


def test_a_broken_link_or_a_page_left_out_of_the_nav_fails_the_build(tmp_path: Path) -> None:
    """--strict is what makes the check worth having: prove it catches both mistakes."""
    for mistake in ("link", "orphan"):
        root = tmp_path / mistake
        shutil.copytree(REPO / "docs", root / "docs")
        shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
        if mistake == "link":
            with (root / "docs" / "cli.md").open("a") as page:
                page.write("\nSee [the missing page](no-such-page.md).\n")
        else:
            (root / "docs" / "orphan.md").write_text("# Not in the nav\n")
        result = _build(root, root / "site")
        assert result.returncode != 0, f"a {mistake} mistake passed --strict"
        assert ("no-such-page.md" if mistake == "link" else "orphan.md") in result.stdout + result.stderr
