"""JSON Lines corpora (BEIR's ``corpus.jsonl`` and the like): one document per record."""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from mmrag.errors import LoadError
from mmrag.loaders._common import (
    FileRef,
    JsonlFields,
    LoaderLimits,
    RecordProblem,
    describe,
    flat_metadata,
    normalize_newlines,
)
from mmrag.types import Document, TextBlock

# Scalar record fields longer than this are text, not metadata.
_MAX_META_STR = 1024


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON: stable across key order, spacing and line moves.

    Args:
        record: The parsed record.

    Returns:
        The hex digest.
    """
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()


class _BadLineError(Exception):
    """A line that cannot become a document; ``doc_id`` is set once the id is known."""

    def __init__(self, reason: str, doc_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.doc_id = doc_id


def _record_id(record: dict[str, Any], fields: JsonlFields) -> str:
    names = (fields.id, "id") if fields.id == "_id" else (fields.id,)
    for name in names:
        if name in record:
            value = record[name]
            break
    else:
        wanted = " or ".join(f"'{n}'" for n in names)
        raise _BadLineError(f"record has no {wanted} field (set the JSONL id field name)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadLineError(f"id must be a string or an integer, not {type(value).__name__}")
    doc_id = str(value)
    if not doc_id.strip():
        raise _BadLineError("id is empty")
    return doc_id


def _string_field(record: dict[str, Any], name: str, doc_id: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _BadLineError(f"field '{name}' must be a string, not {type(value).__name__}", doc_id)
    return value


def _max_line_bytes(limits: LoaderLimits) -> int:
    # A record's text may take 6 bytes per character as JSON (\uXXXX escapes); anything longer is
    # refused without holding the whole line, which for a file without newlines is the file.
    return 6 * limits.max_text_chars + 1024 * 1024


def _lines(handle: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` per line; ``None`` for a line over ``max_bytes``, which is skipped."""
    line_no = 0
    while raw := handle.readline(max_bytes + 1):
        line_no += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            del raw  # not kept while the rest of the line is skipped
            while (rest := handle.readline(64 * 1024)) and not rest.endswith(b"\n"):
                pass
            yield line_no, None
        else:
            yield line_no, raw


def _parse(raw: bytes | None, line_no: int, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise _BadLineError(f"line is over {max_bytes:,} bytes, too long for one record; split it")
    try:
        # Without its line break, so a JSON error's column is on this line, not "line 2 column 1".
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise _BadLineError(f"not valid UTF-8 (byte {exc.start + 1}); JSONL must be UTF-8") from exc
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else describe(exc)
        raise _BadLineError(f"invalid JSON ({detail}); fix or remove the line") from exc
    if not isinstance(record, dict):
        raise _BadLineError(f"expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(
    ref: FileRef, *, fields: JsonlFields, limits: LoaderLimits, strict: bool = False
) -> Iterator[Document | RecordProblem]:
    """Stream a JSONL file as one document per record, and one problem per bad line.

    Each non-blank line must be a JSON object with an id (see :class:`JsonlFields`). The text is
    ``title + "\\n\\n" + text`` when a title is present. Other scalar fields become metadata,
    with ``title`` and the record's ``line`` number. Records with no text at all are skipped
    silently. A bad line (invalid JSON or UTF-8, no id, a field of the wrong type, text over
    the limit, an id already used earlier in the file, which keeps the first) is a
    :class:`RecordProblem` (a duplicate whose first line was bad or had no text is dropped too:
    "neither is indexed"). The file is read a line at a time, and a line is never held past
    :func:`_max_line_bytes`.

    Problems before the first good record are held back until one appears, so a file with no
    good record raises instead of yielding problems first.

    Args:
        ref: The file.
        fields: Which fields hold the id, title and text.
        limits: Resource limits; ``max_text_chars`` applies to each record.
        strict: Raise :class:`LoadError` at the first bad line instead (what :func:`load` does).

    Yields:
        Documents and problems in file order. ``doc_id`` is the record id and ``content_hash``
        the SHA-256 of the record's canonical JSON (see :func:`record_hash`), so an unchanged
        record keeps its hash when other lines change.

    Raises:
        LoadError: Naming the line, when no record could be loaded because of bad lines (or, if
            ``strict``, at the first bad line); with ``skipped=True`` when the file is fine but
            has no records with text.
    """
    path = str(ref.path)
    max_bytes = _max_line_bytes(limits)
    first_line: dict[str, tuple[int, bool]] = {}  # id -> (its first line, whether that loaded)
    held: list[RecordProblem] = []
    n_records = n_documents = n_problems = 0
    try:
        handle = open(ref.path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    try:
        for line_no, raw in _lines(handle, max_bytes):
            if raw is not None:
                if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                if not raw.strip():
                    continue
            try:
                record = _parse(raw, line_no, max_bytes)
                n_records += 1
                document = _record_document(ref, record, line_no, fields, limits, first_line, strict)
            except _BadLineError as bad:
                if strict:
                    raise LoadError(path, f"line {line_no}: {bad.reason}") from bad
                n_problems += 1
                problem = RecordProblem(source=path, line=line_no, reason=bad.reason, doc_id=bad.doc_id)
                if n_documents:
                    yield problem
                else:
                    held.append(problem)
                continue
            if document is None:
                continue
            n_documents += 1
            if held:
                yield from held
                held.clear()
            yield document
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    finally:
        handle.close()
    if n_documents:
        return
    if held:
        first_bad = held[0]
        more = f"; {n_problems - 1:,} more bad lines" if n_problems > 1 else ""
        raise LoadError(path, f"line {first_bad.line}: {first_bad.reason}{more}; no record could be loaded")
    if not n_records:
        raise LoadError(path, "empty file: no records to index", skipped=True)
    raise LoadError(path, f"none of the {n_records} records has any text", skipped=True)


def _record_document(
    ref: FileRef,
    record: dict[str, Any],
    line_no: int,
    fields: JsonlFields,
    limits: LoaderLimits,
    first_line: dict[str, tuple[int, bool]],
    strict: bool,
) -> Document | None:
    """The record's document (``None`` without text), noting its id in ``first_line``."""
    doc_id = _record_id(record, fields)
    if doc_id in first_line:
        first, kept = first_line[doc_id]
        reason = f"duplicate id {doc_id!r} (first at line {first})"
        if not strict:  # a strict read stops here, so it keeps neither
            reason += "; kept the first" if kept else "; neither is indexed"
        raise _BadLineError(reason, doc_id)
    first_line[doc_id] = (line_no, False)
    document = _document(ref, record, doc_id, fields, line_no, limits)
    first_line[doc_id] = (line_no, document is not None)
    return document


def load_jsonl(ref: FileRef, *, fields: JsonlFields, limits: LoaderLimits) -> list[Document]:
    """Load a JSONL file as one document per record, failing the whole file at its first bad line.

    See :func:`iter_jsonl` for the format; this is its ``strict`` form, so a corpus is never
    half-indexed without anyone noticing.

    Raises:
        LoadError: Naming the line number, for the first bad line; with ``skipped=True`` when the
            file has no records with text.
    """
    return [d for d in iter_jsonl(ref, fields=fields, limits=limits, strict=True) if isinstance(d, Document)]


def _document(
    ref: FileRef, record: dict[str, Any], doc_id: str, fields: JsonlFields, line_no: int, limits: LoaderLimits
) -> Document | None:
    path = str(ref.path)
    title = _string_field(record, fields.title, doc_id).strip()
    body = _string_field(record, fields.text, doc_id)
    text = normalize_newlines(f"{title}\n\n{body}" if title and body.strip() else (title or body))
    if not text.strip():
        return None
    if len(text) > limits.max_text_chars:
        raise _BadLineError(f"text is {len(text):,} characters, over the {limits.max_text_chars:,} limit", doc_id)
    reserved = {fields.id, fields.title, fields.text, "_id", "id"}
    extra = {
        str(key): value
        for key, value in record.items()
        if key not in reserved and not (isinstance(value, str) and len(value) > _MAX_META_STR)
    }
    meta = flat_metadata({**extra, "title": title, "line": line_no})
    return Document(
        doc_id=doc_id,
        source=path,
        doc_type="jsonl",
        content_hash=record_hash(record),
        texts=(TextBlock(text=text),),
        metadata=meta,
    )
