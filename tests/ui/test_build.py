"""The committed UI build (src/mmrag/http/static/ui) is what ui/ builds to, and the source stays safe.

The build is rebuilt with the pinned toolchain (``make ui-deps`` installs it, ``make test`` runs
that first) into a temporary folder and compared file by file with the committed one: a change
to ui/ without ``make ui`` fails here. Skips cleanly without npm or without the installed toolchain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UI = REPO / "ui"
BUILT = REPO / "src" / "mmrag" / "http" / "static" / "ui"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_committed_build_matches_a_fresh_build_of_ui(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the committed build is used as it is")
    if not (UI / "node_modules" / ".bin" / "vite").exists():
        pytest.skip("the UI toolchain is not installed: run `make ui-deps` (make test does)")
    out = tmp_path / "ui"
    done = subprocess.run([npm, "run", "build", "--silent"], cwd=UI, env={**os.environ, "MMRAG_UI_OUT": str(out)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    fresh, committed = _files(out), _files(BUILT)
    assert sorted(fresh) == sorted(committed), "the committed UI build is stale: run `make ui` and commit it"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"the committed UI build differs in {stale}: run `make ui` and commit it"


def test_the_toolchain_is_pinned_and_node_modules_stay_out_of_git() -> None:
    package = json.loads((UI / "package.json").read_text())
    lock = json.loads((UI / "package-lock.json").read_text())
    for section in ("dependencies", "devDependencies"):
        for name, version in package[section].items():
            assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version!r} is not an exact version"
            assert lock["packages"][f"node_modules/{name}"]["version"] == version, name
    assert "vite" in package["devDependencies"] and "preact" in package["dependencies"]
    ignored = subprocess.run(["git", "check-ignore", "-q", "ui/node_modules/x"], cwd=REPO)
    assert ignored.returncode == 0, "ui/node_modules must be ignored by git"


def test_the_ui_source_never_parses_markup_from_strings() -> None:
    # Text from the index (file names, chunks, answers) must reach the page as text nodes only.
    for path in sorted((UI / "src").glob("*.js")):
        code = path.read_text()
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "dangerouslySetInnerHTML", "document.write",
                      "eval(", "new Function"):
            assert risky not in code, f"{path.name} uses {risky}"


def test_the_wheel_ships_every_built_file() -> None:
    import fnmatch
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmrag"]
    package = REPO / "src" / "mmrag"
    built = [str(p.relative_to(package)) for p in BUILT.rglob("*") if p.is_file()]
    assert any(b.endswith(".js") for b in built) and any(b.endswith("index.html") for b in built), built
    # setuptools' globs do not cross "/" (fnmatch's * does): compare folder by folder.
    missing = [b for b in built if not any(fnmatch.fnmatch(b, pat) and b.count("/") == pat.count("/") for pat in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_markdown_renderer_keeps_markup_as_text() -> None:
    """ui/test/markdown.test.js under node's own test runner (answers are rendered by ui/src/markdown.js)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (UI / "node_modules" / "marked").exists():
        pytest.skip("the UI toolchain is not installed: run `make ui-deps` (make test does)")
    done = subprocess.run([node, "--test", "test/"], cwd=UI, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^# pass [1-9]", done.stdout, re.M) and "# fail 0" in done.stdout, done.stdout
