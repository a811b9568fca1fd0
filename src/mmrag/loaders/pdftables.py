"""Tables in PDF pages that have a text layer, through pdfplumber.

Two kinds of table are found:

* **Grids** (a ruling line around every cell): pdfplumber's default ``lines`` strategy.
* **Ruled tables** (horizontal rules only, the booktabs style of most papers and data sheets):
  full-width horizontal edges with the same left and right ends are grouped, the area between
  the first and last rule of a group is cut out, and pdfplumber's ``text`` strategy splits it
  into rows and columns. Rows above the second rule are the header (a header that wraps onto
  two lines is joined back into one row).

pdfplumber parses a page's whole layout, which costs more than the text itself, so a page is
only handed to it when pdfium counts enough vector paths on it to draw a table's rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: Rules with the same ends a page needs before it is searched for tables (top and bottom).
MIN_RULES = 2
#: A rule is a horizontal edge at least this wide (points); axis ticks and underlines are not.
MIN_RULE_WIDTH = 100.0
_CID = re.compile(r"\(cid:\d+\)")  # glyphs the font maps to no character


def ruled_candidates(pdfium_page: Any) -> bool:
    """Whether pdfium sees table rules on a page: two wide, flat paths with the same ends.

    This reads path bounds only (about a millisecond a page); pdfplumber's layout analysis,
    which the table finder needs, costs 0.2-1 s a page and runs only where this says yes. A grid
    drawn as cell rectangles only, with no rule across it, is missed.
    """
    import pypdfium2.raw as pdfium_c

    ends: dict[tuple[int, int], int] = {}
    for obj in pdfium_page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_PATH,), max_depth=2):
        left, bottom, right, top = obj.get_bounds()
        if right - left >= MIN_RULE_WIDTH and top - bottom <= 3:
            key = (round(left / 4), round(right / 4))
            ends[key] = ends.get(key, 0) + 1
            if ends[key] >= MIN_RULES:
                return True
    return False


def _text(cell: str | None) -> str:
    return " ".join(_CID.sub("", cell or "").split())


def _grid_tables(page: Any) -> Iterator[list[list[str]]]:
    for table in page.find_tables():
        rows = [[_text(c) for c in row] for row in table.extract()]
        if len(rows) >= 2 and max(len(r) for r in rows) >= 2:
            yield rows


def _rule_groups(page: Any) -> list[list[float]]:
    """The y positions of horizontal rules, grouped by their left and right ends."""
    groups: dict[tuple[int, int], list[float]] = {}
    for edge in page.horizontal_edges:
        if edge["x1"] - edge["x0"] < MIN_RULE_WIDTH:
            continue
        key = (round(edge["x0"] / 4), round(edge["x1"] / 4))
        ys = groups.setdefault(key, [])
        if all(abs(edge["top"] - y) > 2 for y in ys):  # a rule drawn as a thin filled shape has two edges
            ys.append(edge["top"])
    found = []
    for (x0, x1), ys in groups.items():
        if len(ys) >= 2:
            found.append([x0 * 4.0, x1 * 4.0, *sorted(ys)])
    return found


def _ruled_tables(page: Any) -> Iterator[list[list[str]]]:
    for x0, x1, *ys in _rule_groups(page):
        top, bottom = ys[0], ys[-1]
        if bottom - top < 12:
            continue
        bbox = (max(page.bbox[0], x0 - 2), max(page.bbox[1], top - 1), min(page.bbox[2], x1 + 2),
                min(page.bbox[3], bottom + 1))
        region = page.crop(bbox)
        tables = region.find_tables({"vertical_strategy": "text", "horizontal_strategy": "text"})
        if not tables:
            continue
        table = max(tables, key=lambda t: (t.bbox[2] - t.bbox[0]) * (t.bbox[3] - t.bbox[1]))
        header_end = ys[1] if len(ys) >= 3 else None
        header: list[str] = []
        body: list[list[str]] = []
        # extract() assigns each character to the cell holding its centre; row bboxes say
        # which rows sit above the header rule.
        for row, cells in zip(table.rows, table.extract()):
            texts = [_text(c) for c in cells]
            if not any(texts):
                continue
            if header_end is not None and row.bbox[1] < header_end:
                header = [f"{a} {b}".strip() for a, b in zip(header, texts)] if header else texts
            else:
                body.append(texts)
        rows = ([header] if header else []) + body
        if len(rows) >= 2 and max(len(r) for r in rows) >= 2:
            yield rows


def page_tables(plumber_page: Any) -> list[list[list[str]]]:
    """The tables on one pdfplumber page, each as rows of cell text (header first)."""
    tables = list(_grid_tables(plumber_page))
    if not tables:
        tables = list(_ruled_tables(plumber_page))
    return tables
