"""The code blocks of the README and docs/: which run, and which are marked illustrative and why.

A fenced block opens with three backticks and a language (```bash, ```python, ```text, ...). A block
is illustrative when the nearest non-blank line above its fence is an HTML comment
``<!-- illustrative: REASON -->`` (GitHub and mkdocs render nothing for it). Every other bash, sh
or python block runs in tests/docs/test_docs_blocks.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>`{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*illustrative:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown page."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str  # the info string's first word, "" when there is none
    code: str
    illustrative: str | None  # the marker's reason, None when the block runs

    @property
    def runs_as(self) -> str | None:
        """"bash" or "python" when the test runs the block, else None."""
        return None if self.illustrative is not None else RUNNABLE.get(self.language)

    def where(self) -> str:
        """``page.md:LINE``, for messages."""
        return f"{self.page.name}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order.

    Raises:
        ValueError: a fence that is never closed, or an illustrative marker without a reason.
    """
    lines = page.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        language = (opening["info"].split() or [""])[0].lower()
        end = next((j for j in range(i + 1, len(lines))
                    if re.fullmatch(rf" *{ticks}`*\s*", lines[j])), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: the code fence is never closed")
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        if marker and not marker["reason"]:
            raise ValueError(f"{page}:{i + 1}: an illustrative block must say why (<!-- illustrative: REASON -->)")
        found.append(Block(page, i + 1, language, code + "\n", marker["reason"] if marker else None))
        i = end + 1
    return found
