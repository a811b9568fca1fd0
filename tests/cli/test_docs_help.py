"""The docs show the CLI's real --help text (regenerate: `.venv/bin/python -m tests.cli.test_docs_help`).

Each block sits between ``<!-- help:mmrag ... -->`` and ``<!-- /help:mmrag ... -->`` on one page of docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.conftest import REPO


COMMANDS = [[], ["ingest"], ["ask"], ["serve"], ["mcp"], ["eval", "run"], ["reindex"], ["promote"]]


def _pattern(name: str) -> str:
    return rf"(<!-- help:{name} -->\n```text\n)(.*?)(\n```\n<!-- /help:{name} -->)"


def _page(name: str) -> tuple[Path, re.Match[str]] | None:
    for page in sorted((REPO / "docs").rglob("*.md")):
        block = re.search(_pattern(name), page.read_text(), re.S)
        if block:
            return page, block
    return None


def _help(command: list[str]) -> str:
    return CliRunner().invoke(main, [*command, "--help"], prog_name="mmrag", terminal_width=80).output.strip()


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(["mmrag", *c]) for c in COMMANDS])
def test_docs_help_block_matches_cli(command: list[str]) -> None:
    name = " ".join(["mmrag", *command])
    found = _page(name)
    assert found, f"no page in docs/ has a help block for {name!r}"
    assert found[1].group(2).strip() == _help(command)


def _write() -> None:
    """Rewrite the help blocks in docs/ from the CLI."""
    for command in COMMANDS:
        name = " ".join(["mmrag", *command])
        found = _page(name)
        if found is None:
            raise SystemExit(f"no page in docs/ has a help block for {name!r}: add the markers first")
        page, _ = found
        out = _help(command)
        page.write_text(re.sub(_pattern(name), lambda m: m.group(1) + out + m.group(3), page.read_text(), flags=re.S))


if __name__ == "__main__":
    _write()
