"""Plain text, Markdown and HTML files."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator
from dataclasses import replace

from mmrag.errors import LoadError
from mmrag.loaders._common import (
    DOC_TYPES,
    FileRef,
    LoaderLimits,
    bom_encoding,
    check_text_size,
    decode_text,
    flat_metadata,
    image_header_ok,
    normalize_newlines,
    tidy_blank_lines,
    translating,
)
from mmrag.loaders.layout import SectionPath, markdown_sections, section_meta, table_blocks
from mmrag.types import Document, ImageAsset, TextBlock

EMPTY_REASON = "empty file: no text to index"


def _read(ref: FileRef) -> bytes:
    try:
        return ref.path.read_bytes()
    except OSError as exc:
        raise LoadError(str(ref.path), f"cannot read file: {exc.strerror or exc}") from exc


_MD_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_MD_H1 = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$")


def _markdown_title(text: str) -> str | None:
    in_fence = False
    for line in text.split("\n"):
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _MD_H1.match(line)):
            return match.group(1)
    return None


def load_text(ref: FileRef, *, content_hash: str, limits: LoaderLimits) -> Document:
    """Load a ``.txt`` file as one text block, a Markdown file as one block per heading.

    The encoding is guessed (see :func:`~mmrag.loaders._common.decode_text`) and newlines are
    normalised to ``\\n``; Markdown syntax is kept. A Markdown file's first ``#`` heading becomes
    ``metadata["title"]``.

    Args:
        ref: The file.
        content_hash: The file's hash, stored on the document.
        limits: Resource limits.

    Returns:
        The document, with ``metadata["encoding"]``.

    Raises:
        LoadError: If the file is empty or whitespace-only (``skipped=True``), binary, or too long.
    """
    path = str(ref.path)
    data = _read(ref)
    if not data.strip():
        raise LoadError(path, EMPTY_REASON, skipped=True)
    text, encoding = decode_text(path, data)
    text = normalize_newlines(text)
    if not text.strip():
        raise LoadError(path, EMPTY_REASON, skipped=True)
    check_text_size(path, len(text), limits)
    doc_type = DOC_TYPES[ref.suffix]
    meta: dict[str, object] = {"encoding": encoding}
    if doc_type == "markdown":
        meta["title"] = _markdown_title(text)
    return Document(
        doc_id=ref.doc_id,
        source=path,
        doc_type=doc_type,
        content_hash=content_hash,
        texts=tuple(markdown_sections(text)) if doc_type == "markdown" else (TextBlock(text=text),),
        metadata=flat_metadata(meta),
    )


# --- HTML -----------------------------------------------------------------------------------

#: Bytes searched for a declared charset (the HTML spec's prescan reads 1024; pages with a long head exist).
_DECLARATION_WINDOW = 8192
# Elements whose text is never content: code, styling, navigation chrome and form controls.
_DROP = frozenset(
    {"script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed", "nav", "head",
     "select", "button"}
)
_BLOCK = frozenset(
    {"address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div",
     "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
     "header", "hgroup", "hr", "html", "li", "main", "ol", "p", "pre", "section", "summary", "table", "tbody",
     "tfoot", "thead", "tr", "ul"}
)
# Blocks followed by a blank line, so chunkers can split on paragraph boundaries.
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "ul", "ol", "dl", "blockquote", "figure"}
)
_CELLS = frozenset({"td", "th"})


def decode_html(path: str, data: bytes) -> tuple[str, str]:
    """Decode HTML bytes: BOM first, then a declared charset, then the text-file guesses.

    The declaration (``<meta charset>``, ``<meta http-equiv content="...; charset=">`` or an XML
    declaration) is found by bs4's ``EncodingDetector``, in the first 8 KiB.

    Args:
        path: The file, for errors.
        data: Its bytes.

    Returns:
        ``(text, encoding)``.
    """
    found = bom_encoding(data)
    if found is not None:
        encoding, skip = found
        return data[skip:].decode(encoding, errors="replace"), encoding
    from bs4.dammit import EncodingDetector

    claimed = EncodingDetector.find_declared_encoding(data[:_DECLARATION_WINDOW], is_html=True,
                                                      search_entire_document=True)
    if claimed:
        try:
            declared = codecs.lookup(claimed).name
        except LookupError:
            declared = ""
        # The meta tag was readable as ASCII, so a "utf-16" claim is false (the HTML spec
        # says to read it as UTF-8); "latin-1" means windows-1252 on the web.
        declared = {"latin-1": "cp1252", "iso8859-1": "cp1252", "ascii": "cp1252"}.get(declared, declared)
        if declared and not declared.startswith(("utf-16", "utf-32")):
            try:
                return data.decode(declared), declared
            except UnicodeDecodeError:
                pass
    return decode_text(path, data)


class _TextSink:
    """Collects text from a DOM walk as lines, keeping block structure."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current: list[str] = []
        self.pre_depth = 0

    def flush(self) -> None:
        line = "".join(self.current)
        self.current = []
        line = line.rstrip() if self.pre_depth else " ".join(line.split())
        if line:
            self.lines.append(line)

    def start(self, name: str) -> None:
        if name == "br":
            self.flush()
        elif name in _CELLS:
            if "".join(self.current).strip():
                self.current.append(" | ")
        elif name in _BLOCK:
            self.flush()
        if name == "pre":
            self.pre_depth += 1

    def end(self, name: str) -> None:
        if name in _BLOCK:
            self.flush()
        if name == "pre":
            self.pre_depth -= 1
        if name in _PARAGRAPH and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def text(self, value: str) -> None:
        if not self.pre_depth:
            self.current.append(value)
            return
        first, *rest = value.split("\n")
        self.current.append(first)
        for part in rest:
            self.flush()
            self.current.append(part)


_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
#: A table cell holding more text than this is page layout (a table used to place paragraphs),
#: not data: such a table is read as text.
_MAX_CELL_CHARS = 400


def _table_rows(table: object) -> list[list[str]] | None:
    """A data table's rows (``colspan`` cells padded with empty ones), or ``None`` for layout."""
    from bs4 import Tag

    assert isinstance(table, Tag)
    if table.find("table") is not None:
        return None  # nested tables are layout
    rows: list[list[str]] = []
    for tr in table.find_all("tr"):
        cells: list[str] = []
        for cell in tr.find_all(["td", "th"], recursive=False):
            if cell.has_attr("hidden"):
                continue
            text = " ".join(cell.get_text(" ").split())
            if len(text) > _MAX_CELL_CHARS:
                return None
            try:
                span = max(1, min(int(str(cell.get("colspan", 1))), 50))
            except ValueError:
                span = 1
            cells += [text] + [""] * (span - 1)
        rows.append(cells)
    return rows


def _html_blocks(soup: object) -> list[TextBlock]:
    """The visible text as blocks: one per section (headings start one), one per table part."""
    from bs4 import CData, NavigableString, Tag

    sink = _TextSink()
    path = SectionPath()
    blocks: list[TextBlock] = []
    section: str | None = None
    headings: set[str] = set()  # heading lines in the sink since the last cut

    def cut(final: bool = False) -> None:
        sink.flush()
        if not final and all(not line or line in headings for line in sink.lines):
            return  # only headings so far: they open the next block (no chunk of a bare title)
        text = tidy_blank_lines("\n".join(sink.lines))
        sink.lines = []
        headings.clear()
        if text:  # at the end, headings alone are still the document's text
            blocks.append(TextBlock(text=text, metadata=section_meta(section)))

    assert isinstance(soup, Tag)
    # Iterative walk: deeply nested (hostile) HTML must not hit the recursion limit.
    stack: list[tuple[Tag, Iterator[object]]] = [(soup, iter(soup.children))]
    while stack:
        tag, children = stack[-1]
        node = next(children, None)
        if node is None:
            stack.pop()
            sink.end(tag.name)
            continue
        if isinstance(node, Tag):
            if node.name in _DROP or node.has_attr("hidden"):
                continue
            if node.name in _HEADINGS:
                cut()
                title = node.get_text(" ")
                path.enter(int(node.name[1]), title)
                section = path.text()
                headings.add(" ".join(title.split()))
            if node.name == "table":
                rows = _table_rows(node)
                parts = table_blocks(rows, section=section) if rows else []
                if any(part.metadata.get("content") == "table" for part in parts):
                    cut()
                    blocks.extend(parts)
                    continue
            sink.start(node.name)
            stack.append((node, iter(node.children)))
        elif type(node) in (NavigableString, CData):
            # Other NavigableString subclasses are comments, doctypes and processing instructions.
            sink.text(str(node))
    cut(final=True)
    return blocks


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_DATA_URI = re.compile(r"^data:(image/[a-z0-9.+-]+)((?:;[^,;]*)*?);base64,(.*)$", re.IGNORECASE | re.DOTALL)


def _data_uri_images(soup: object, limits: LoaderLimits) -> tuple[list[ImageAsset], int]:
    from bs4 import Tag

    assert isinstance(soup, Tag)
    images: list[ImageAsset] = []
    skipped = 0
    for img in soup.find_all("img"):
        src = img.get("src") if isinstance(img, Tag) else None
        if not isinstance(src, str) or not src.lstrip().lower().startswith("data:"):
            continue  # remote and relative images are not fetched
        match = _DATA_URI.match(src.strip())
        if match is None:
            skipped += 1
            continue
        try:
            data = base64.b64decode(match.group(3), validate=False)
        except (binascii.Error, ValueError):
            skipped += 1
            continue
        if not image_header_ok(data, limits):
            skipped += 1
            continue
        ext = match.group(1).split("/", 1)[1].lower()
        images.append(ImageAsset(data=data, index=len(images), name=f"image{len(images)}.{ext}"))
    return images, skipped


def load_html(ref: FileRef, *, content_hash: str, limits: LoaderLimits) -> Document:
    """Load an HTML file: visible text with block structure, plus inline ``data:`` images.

    Text inside ``script``, ``style``, ``nav``, ``head``, form controls and ``hidden`` elements
    is dropped; block elements end lines, and paragraphs, headings and lists end with a blank
    line. Each heading (``h1``-``h6``) starts a new text block whose ``section`` is the path of
    headings above it. A data table becomes Markdown blocks of its own (``content: table``, see
    :func:`~mmrag.loaders.layout.table_blocks`); a layout table (nested tables, long cells) is
    read as text with cells joined by ``" | "``. ``<title>`` becomes
    ``metadata["title"]``. ``<img src="data:image/...;base64,...">`` images become image assets
    (tiny, vector and unreadable ones are skipped, see
    :func:`~mmrag.loaders._common.image_header_ok`); remote images are not fetched.

    Args:
        ref: The file.
        content_hash: The file's hash.
        limits: Resource limits.

    Returns:
        The document.

    Raises:
        LoadError: If the file has neither text nor images (``skipped=True``) or cannot be parsed.
    """
    path = str(ref.path)
    data = _read(ref)
    if not data.strip():
        raise LoadError(path, EMPTY_REASON, skipped=True)
    markup, encoding = decode_html(path, data)
    with translating(path, "HTML file"):
        from bs4 import BeautifulSoup

        # An XML declaration is moot once decoded, and it makes bs4 warn that XHTML looks like XML.
        soup = BeautifulSoup(_XML_DECLARATION.sub("", markup, count=1), "lxml")
        title = " ".join(soup.title.get_text(" ").split()) if soup.title is not None else None
        images, skipped = _data_uri_images(soup, limits)
        blocks = [replace(b, text=normalize_newlines(b.text)) for b in _html_blocks(soup)]
    if not blocks and not images:
        raise LoadError(path, "no visible text and no inline images in the HTML", skipped=True)
    check_text_size(path, sum(len(b.text) for b in blocks), limits)
    meta: dict[str, object] = {"title": title, "encoding": encoding}
    if skipped:
        meta["images_skipped"] = skipped
    return Document(
        doc_id=ref.doc_id,
        source=path,
        doc_type="html",
        content_hash=content_hash,
        texts=tuple(blocks),
        images=tuple(images),
        metadata=flat_metadata(meta),
    )
