"""Document structure the loaders keep: tables as Markdown blocks, and section paths from headings.

A table becomes its own :class:`~mmrag.types.TextBlock` (so its own chunk), rendered as a
Markdown table with ``content: table`` in its metadata. A table too long for one chunk is split
by rows into several blocks, each repeating the header row, so every part can be read (and
matched against a question) on its own. :class:`SectionPath` tracks the headings above the
current text and renders them as ``"2 Method > 2.1 Data"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmrag.chunking import count_tokens
from mmrag.types import TextBlock

#: Tokens (the chunker's count, in which every "|" and "-" is one) per table part: just under the
#: default chunk size (200), so the chunker keeps each part whole.
TABLE_PART_TOKENS = 190
#: Section paths longer than this many characters are cut from the left (the nearest headings
#: matter most), so a deep outline does not crowd out the chunk in the embedded text.
MAX_SECTION_CHARS = 160


def _cell(text: str) -> str:
    # A pipe inside a cell would end it; a newline would end the row.
    return " ".join(text.split()).replace("|", "\\|")


def clean_rows(rows: Sequence[Sequence[str | None]]) -> list[list[str]]:
    """Normalise a table's cells: text on one line, empty rows and all-empty columns dropped.

    Rows are padded to the widest one. Layout tables in HTML (SEC filings) are full of spacer
    columns that hold nothing in any row; they would only make the Markdown wide.
    """
    cells = [[_cell(c or "") for c in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return []
    width = max(len(row) for row in cells)
    cells = [row + [""] * (width - len(row)) for row in cells]
    keep = [j for j in range(width) if any(row[j] for row in cells)]
    return [[row[j] for j in keep] for row in cells]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a header row and body rows as a Markdown (GFM) table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_blocks(
    rows: Sequence[Sequence[str | None]],
    *,
    page: int | None = None,
    section: str | None = None,
    max_tokens: int = TABLE_PART_TOKENS,
    **extra: str | int | float | bool,
) -> list[TextBlock]:
    """Turn a table's rows into Markdown text blocks, split by rows with the header repeated.

    The first non-empty row is the header. A table with one row, or one column, is not a table
    a question about a cell can use: it comes back as plain text (no ``content: table``).

    Args:
        rows: The cells, row by row (``None`` for an empty cell).
        page: The page the table is on.
        section: The section path above it.
        max_tokens: The most tokens (see :func:`mmrag.chunking.count_tokens`) in one part; a
            single row larger than this still makes one part of its own.
        **extra: More metadata for every part.

    Returns:
        The blocks; ``metadata`` has ``content: "table"``, ``table_rows`` (body rows in that
        part), ``table_part`` (1-based) when the table was split, and ``section``.
    """
    cells = clean_rows(rows)
    base: dict[str, str | int | float | bool] = dict(extra)
    if section:
        base["section"] = section
    if not cells:
        return []
    if len(cells) < 2 or len(cells[0]) < 2:
        text = "\n".join(" | ".join(c for c in row if c) for row in cells)
        return [TextBlock(text=text, page=page, metadata=base)]
    header, body = cells[0], cells[1:]
    budget = max_tokens - len(count_tokens(markdown_table(header, [])))
    parts: list[list[list[str]]] = [[]]
    used = 0
    for row in body:
        cost = len(count_tokens("| " + " | ".join(row) + " |"))
        if parts[-1] and used + cost > budget:
            parts.append([])
            used = 0
        parts[-1].append(row)
        used += cost
    blocks = []
    for n, part in enumerate(parts, start=1):
        meta = {**base, "content": "table", "table_rows": len(part)}
        if len(parts) > 1:
            meta["table_part"] = n
        blocks.append(TextBlock(text=markdown_table(header, part), page=page, metadata=meta))
    return blocks


class SectionPath:
    """The headings above the current position, as a stack of ``(level, title)``.

    Example:
        >>> path = SectionPath()
        >>> path.enter(1, "2 Method"); path.enter(2, "2.1 Data")
        >>> path.text()
        '2 Method > 2.1 Data'
        >>> path.enter(1, "3 Results"); path.text()
        '3 Results'
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        """A heading of ``level`` (1 = top) starts: it replaces every heading at or below it."""
        title = " ".join(title.split())
        if not title:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))

    def text(self) -> str | None:
        """The path, outermost first, or ``None`` before the first heading."""
        if not self._stack:
            return None
        path = " > ".join(title for _, title in self._stack)
        return path if len(path) <= MAX_SECTION_CHARS else "…" + path[-(MAX_SECTION_CHARS - 1):]


def section_meta(section: str | None) -> dict[str, str | int | float | bool]:
    """``{"section": section}``, or no metadata before the first heading."""
    return {"section": section} if section else {}


_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def markdown_sections(text: str) -> list[TextBlock]:
    """Split Markdown at its ATX headings (``#`` to ``######``, outside code fences).

    Each block runs from a heading to the next one and carries the path of headings above it.
    The heading line stays in its block's text, so offsets and what is shown are unchanged. A
    heading with nothing under it before the next heading joins that one's block.
    """
    blocks: list[TextBlock] = []
    path = SectionPath()
    lines = text.split("\n")
    section = None
    in_fence = False
    offset = 0
    cuts: list[tuple[int, str | None]] = []
    for line in lines:
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _MD_HEADING.match(line)):
            cuts.append((offset, section))
            path.enter(len(match.group(1)), match.group(2))
            section = path.text()
        offset += len(line) + 1
    cuts.append((len(text), section))
    begin = 0
    for n, (end, sec) in enumerate(cuts):
        chunk = text[begin:end]
        lines = [line for line in chunk.split("\n") if line.strip()]
        if n < len(cuts) - 1 and all(_MD_HEADING.match(line) for line in lines):
            continue  # headings alone open the next block (no chunk of a bare title)
        if chunk.strip():
            blocks.append(TextBlock(text=chunk, metadata=section_meta(sec)))
        begin = end
    return blocks
