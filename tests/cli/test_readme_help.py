"""README shows the CLI's real --help text (regenerate: see the marked blocks in README.md)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.conftest import REPO


COMMANDS = [[], ["ingest"], ["ask"], ["serve"], ["mcp"], ["eval", "run"], ["reindex"], ["promote"]]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(["mmrag", *c]) for c in COMMANDS])
def test_readme_help_block_matches_cli(command: list[str]) -> None:
    name = " ".join(["mmrag", *command])
    readme = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- help:{name} -->\n```\n(.*?)\n```\n<!-- /help:{name} -->", readme, re.S)
    assert block, f"README has no help block for {name!r}"
    result = CliRunner().invoke(main, [*command, "--help"], prog_name="mmrag", terminal_width=80)
    assert block.group(1).strip() == result.output.strip()


def _write() -> None:
    """Rewrite README's help blocks from the CLI: `.venv/bin/python -m tests.cli.test_readme_help`."""
    path = REPO / "README.md"
    text = path.read_text()
    for command in COMMANDS:
        name = " ".join(["mmrag", *command])
        out = CliRunner().invoke(main, [*command, "--help"], prog_name="mmrag", terminal_width=80).output.strip()
        text = re.sub(rf"(<!-- help:{name} -->\n```\n)(.*?)(\n```\n<!-- /help:{name} -->)",
                      lambda m: m.group(1) + out + m.group(3), text, flags=re.S)
    path.write_text(text)


if __name__ == "__main__":
    _write()
