"""Tables as Markdown blocks, section paths, and the chunker keeping table parts whole."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mmrag.chunking import ChunkSpec, SentenceChunker, count_tokens
from mmrag.loaders import FileRef, LoaderLimits, load
from mmrag.loaders.layout import SectionPath, markdown_sections, table_blocks

NEVER = LoaderLimits(ocr="never")


def _load(path: Path):  # type: ignore[no-untyped-def]
    [doc] = load(FileRef.from_path(path), content_hash="h", limits=NEVER)
    return doc


def test_table_blocks_render_markdown_and_drop_empty_columns() -> None:
    [block] = table_blocks([["Name", "", "Qty"], ["apple", None, "3"], ["", "", ""], ["pear", "", "5 | 6"]],
                           page=2, section="Fruit")
    assert block.text == "| Name | Qty |\n|---|---|\n| apple | 3 |\n| pear | 5 \\| 6 |"
    assert block.page == 2
    assert block.metadata == {"section": "Fruit", "content": "table", "table_rows": 2}


def test_a_one_row_or_one_column_table_is_plain_text() -> None:
    [block] = table_blocks([["only", "row"]])
    assert block.text == "only | row" and "content" not in block.metadata
    assert table_blocks([[None, ""], ["", None]]) == []


@settings(max_examples=30, deadline=None)
@given(n_rows=st.integers(1, 120), width=st.integers(2, 6), max_tokens=st.integers(60, 300))
def test_long_tables_split_by_rows_with_the_header_in_every_part(n_rows: int, width: int, max_tokens: int) -> None:
    header = [f"col{j}" for j in range(width)]
    rows = [header] + [[f"r{i}c{j} value" for j in range(width)] for i in range(n_rows)]
    parts = table_blocks(rows, max_tokens=max_tokens)
    seen = []
    for n, part in enumerate(parts, start=1):
        lines = part.text.split("\n")
        assert lines[0] == "| " + " | ".join(header) + " |" and lines[1] == "|---" * width + "|"
        assert len(count_tokens(part.text)) <= max_tokens or len(lines) == 3  # one huge row stands alone
        assert part.metadata["table_rows"] == len(lines) - 2
        assert part.metadata.get("table_part", 1) == n
        seen += lines[2:]
    assert seen == ["| " + " | ".join(r) + " |" for r in rows[1:]]  # every row once, in order


def test_the_chunker_keeps_a_table_part_whole_and_cuts_oversize_ones_at_rows() -> None:
    rows = [["k", "v"]] + [[f"key {i}", f"value number {i}. Ends here."] for i in range(12)]
    [block] = table_blocks(rows, max_tokens=10_000)
    whole = SentenceChunker(ChunkSpec(size=400, overlap=20)).chunk("d", [block])
    assert [c.text for c in whole] == [block.text] and whole[0].metadata["content"] == "table"
    small = SentenceChunker(ChunkSpec(size=40, overlap=8)).chunk("d", [block])
    assert len(small) > 1
    for chunk in small:
        assert block.text[chunk.start:chunk.end] == chunk.text
        assert all(line.startswith("| ") and line.endswith(" |") or line.startswith("|---") for line in chunk.text.split("\n"))


def test_section_path_replaces_headings_at_or_below_a_new_one() -> None:
    path = SectionPath()
    assert path.text() is None
    path.enter(1, "2 Method")
    path.enter(3, "2.1.1  Deep")
    path.enter(2, "2.1 Data")
    assert path.text() == "2 Method > 2.1 Data"
    path.enter(1, "3 Results")
    assert path.text() == "3 Results"


def test_markdown_sections_follow_headings_outside_code_fences() -> None:
    text = "intro\n# A\none\n```\n# not a heading\n```\n## B\ntwo\n# C\nthree\n"
    blocks = markdown_sections(text)
    assert "".join(b.text for b in blocks) == text
    assert [b.metadata.get("section") for b in blocks] == [None, "A", "A > B", "C"]


def test_html_headings_and_tables(tmp_path: Path) -> None:
    html = ("<h1>Report</h1><p>Intro.</p><h2>Sales</h2><table><tr><th>Region</th><th colspan=2>Units</th></tr>"
            "<tr><td>North</td><td>12</td><td>kg</td></tr></table><h2>Costs</h2><p>Low.</p>"
            "<table><tr><td><table><tr><td>nested</td><td>layout</td></tr></table></td></tr></table>")
    (tmp_path / "r.html").write_text(html)
    doc = _load(tmp_path / "r.html")
    by_text = {b.text: b.metadata for b in doc.texts}
    assert by_text["Report\n\nIntro."] == {"section": "Report"}
    assert by_text["| Region | Units |  |\n|---|---|---|\n| North | 12 | kg |"] == {
        "section": "Report > Sales", "content": "table", "table_rows": 1}
    costs = [b for b in doc.texts if b.metadata.get("section") == "Report > Costs"]
    assert len(costs) == 1 and "nested | layout" in costs[0].text  # a layout table stays text


def test_docx_heading_styles_give_sections(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Guide", level=0)
    document.add_heading("Install", level=1)
    document.add_paragraph("Run make.")
    document.add_heading("Offline", level=2)
    document.add_paragraph("No network.")
    table = document.add_table(rows=3, cols=2)
    for r, values in enumerate([["Package", "Version"], ["torch", "2.14.1"], ["tantivy", "0.27.0"]]):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    document.save(str(tmp_path / "g.docx"))
    doc = _load(tmp_path / "g.docx")
    sections = [(b.metadata.get("section"), b.metadata.get("content")) for b in doc.texts]
    assert sections == [("Guide", None), ("Guide > Install", None), ("Guide > Install > Offline", None),
                        ("Guide > Install > Offline", "table")]
    assert doc.texts[-1].text.split("\n")[-1] == "| tantivy | 0.27.0 |"
