"""JSON Lines corpora (BEIR's ``corpus.jsonl`` and the like): one document per record."""

from __future__ import annotations

import codecs
import hashlib
import json
from typing import Any

from mmrag.errors import LoadError
from mmrag.loaders._common import FileRef, JsonlFields, LoaderLimits, describe, flat_metadata, normalize_newlines
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


def _record_id(path: str, record: dict[str, Any], fields: JsonlFields, line_no: int) -> str:
    names = (fields.id, "id") if fields.id == "_id" else (fields.id,)
    for name in names:
        if name in record:
            value = record[name]
            break
    else:
        wanted = " or ".join(f"'{n}'" for n in names)
        raise LoadError(path, f"line {line_no}: record has no {wanted} field (set the JSONL id field name)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LoadError(path, f"line {line_no}: id must be a string or an integer, not {type(value).__name__}")
    doc_id = str(value)
    if not doc_id.strip():
        raise LoadError(path, f"line {line_no}: id is empty")
    return doc_id


def _string_field(path: str, record: dict[str, Any], name: str, line_no: int) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LoadError(path, f"line {line_no}: field '{name}' must be a string, not {type(value).__name__}")
    return value


def load_jsonl(ref: FileRef, *, fields: JsonlFields, limits: LoaderLimits) -> list[Document]:
    """Load a JSONL file as one document per record.

    Each non-blank line must be a JSON object with an id (see :class:`JsonlFields`). The text is
    ``title + "\\n\\n" + text`` when a title is present. Other scalar fields become metadata,
    with ``title`` and the record's ``line`` number. Records with no text at all are skipped.
    One bad line (invalid JSON or UTF-8, missing or duplicate id) fails the whole file, so a
    corpus is never half-indexed without anyone noticing.

    Args:
        ref: The file.
        fields: Which fields hold the id, title and text.
        limits: Resource limits; ``max_text_chars`` applies to each record.

    Returns:
        The documents, in file order. ``doc_id`` is the record id and ``content_hash`` the
        SHA-256 of the record's canonical JSON (see :func:`record_hash`), so an unchanged
        record keeps its hash when other lines change.

    Raises:
        LoadError: Naming the line number, for the first bad line; with ``skipped=True`` when the
            file has no records with text.
    """
    path = str(ref.path)
    documents: list[Document] = []
    first_line: dict[str, int] = {}
    n_records = 0
    try:
        handle = open(ref.path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    try:
        # Streamed line by line: corpora run to hundreds of megabytes.
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"line {line_no}: not valid UTF-8 (byte {exc.start + 1}); JSONL must be UTF-8"
                raise LoadError(path, reason) from exc
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else describe(exc)
                raise LoadError(path, f"line {line_no}: invalid JSON ({detail}); fix or remove the line") from exc
            if not isinstance(record, dict):
                raise LoadError(path, f"line {line_no}: expected a JSON object, got {type(record).__name__}")
            n_records += 1
            doc_id = _record_id(path, record, fields, line_no)
            if doc_id in first_line:
                raise LoadError(path, f"line {line_no}: duplicate id {doc_id!r} (first on line {first_line[doc_id]})")
            first_line[doc_id] = line_no
            document = _document(ref, record, doc_id, fields, line_no, limits)
            if document is not None:
                documents.append(document)
    except OSError as exc:
        raise LoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    finally:
        handle.close()
    if not n_records:
        raise LoadError(path, "empty file: no records to index", skipped=True)
    if not documents:
        raise LoadError(path, f"none of the {n_records} records has any text", skipped=True)
    return documents


def _document(
    ref: FileRef, record: dict[str, Any], doc_id: str, fields: JsonlFields, line_no: int, limits: LoaderLimits
) -> Document | None:
    path = str(ref.path)
    title = _string_field(path, record, fields.title, line_no).strip()
    body = _string_field(path, record, fields.text, line_no)
    text = normalize_newlines(f"{title}\n\n{body}" if title and body.strip() else (title or body))
    if not text.strip():
        return None
    if len(text) > limits.max_text_chars:
        raise LoadError(
            path, f"line {line_no}: text is {len(text):,} characters, over the {limits.max_text_chars:,} limit"
        )
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
