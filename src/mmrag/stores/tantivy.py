"""The keyword index on tantivy: BM25 over prose chunks, updated in place and queried from disk.

Why tantivy rather than SQLite FTS5: FTS5 scores every row that matches any query term, so a
query's cost grows with the collection (measured here on SciFact chunks: p50 36 ms at 100k rows,
heading for ~0.4 s at 1M), while tantivy's block-max WAND reads only the postings that can still
reach the top k (p50 0.4 ms at 100k). The price is a second commit beside the manifest's, which the
manifest's ``pending -> done`` protocol already covers: a document's keyword rows are committed
before its row says ``done``, and a ``pending`` document is redone (its rows deleted and written
again) by the next run.

Text is analysed by :func:`mmrag.keyword.analyze` (the tokenizer, stopwords and stemmer of the
BM25 index before it) and stored pre-tokenized, so the engine's whitespace tokenizer only splits it.
Every chunk's metadata sits in one JSON field, and a Chroma ``where`` is translated into a tantivy
query (:func:`where_query`), so filters are evaluated by the engine.

Every tantivy exception (including a Rust panic, which pyo3 raises as a ``BaseException``) is
translated to :class:`~mmrag.errors.StoreError` here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mmrag.errors import InvalidInputError, MissingDependencyError, StoreError
from mmrag.keyword import MAX_INDEX_CONDITIONS, analyze, analyze_many, check_where
from mmrag.types import Hit, Record

log = logging.getLogger(__name__)

#: Bumped when the schema changes; an index of another version is rebuilt from the text store.
SCHEMA_VERSION = "1"
#: Writer memory. tantivy needs at least 15 MB; more only delays its internal flushes.
WRITER_HEAP = 64_000_000
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _tantivy() -> Any:
    try:
        import tantivy
    except ImportError as exc:  # pragma: no cover - a core dependency; only a broken install lacks it
        raise MissingDependencyError("tantivy is required for the keyword index: pip install mmrag") from exc
    return tantivy


@contextlib.contextmanager
def _translate(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except (StoreError, InvalidInputError):
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - tantivy raises ValueError/OSError, and Rust panics as BaseException
        raise StoreError(f"The keyword index in {path} failed to {action}: {type(exc).__name__}: {exc}") from exc


def _schema() -> Any:
    tantivy = _tantivy()
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("doc_id", stored=True, tokenizer_name="raw", fast=True)
    sb.add_text_field("source", stored=False, tokenizer_name="raw")
    sb.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="freq")
    sb.add_bytes_field("text", stored=True, indexed=False, fast=False)  # returned with hits, never searched
    sb.add_json_field("meta", stored=True, tokenizer_name="raw", fast=True)
    return sb.build()


class TantivyKeywordIndex:
    """The keyword rows of one collection in ``folder`` (a tantivy index).

    Readers in any process see a write as soon as it is committed: each query first checks the
    index's ``meta.json`` and reloads when it changed (one ``stat``), rather than polling.

    Args:
        folder: the index folder; created when missing.

    Raises:
        StoreError: the folder cannot be opened as an index (the message names it).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        with _translate("open", self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            tantivy = _tantivy()
            self._schema = _schema()
            fresh = not tantivy.Index.exists(str(self.folder))
            self._index = tantivy.Index(self._schema, path=str(self.folder), reuse=True)
            self._index.config_reader(reload_policy="Manual")
            if fresh:
                (self.folder / "mmrag-schema").write_text(SCHEMA_VERSION)

    # -- writes ---------------------------------------------------------------------------------
    def write(self, delete_docs: Sequence[str] = (), records: Sequence[Record] = ()) -> None:
        """Delete every row of ``delete_docs``, then add ``records``, in one commit.

        A crash before the commit leaves the index as it was; after it, every change is there.
        Callers hold the collection's writer lock, so this is the only writer of the folder.

        Args:
            delete_docs: documents whose rows go (a redo or a delete).
            records: text records (id, metadata with ``doc_id``/``source``, the chunk text).
        """
        if not delete_docs and not records:
            return
        tantivy = _tantivy()
        with _translate("write", self.folder):
            writer = self._index.writer(WRITER_HEAP, 1)
            try:
                # A writer killed inside a commit leaves files meta.json does not list (a segment's
                # .del file, say). The redo of the same delete picks the same opstamp, hence the same
                # file name, and would fail with FileAlreadyExists: drop them first.
                writer.garbage_collect_files()
                for doc_id in delete_docs:
                    writer.delete_documents_by_term("doc_id", doc_id)
                bodies = analyze_many([r.document or "" for r in records], [r.metadata.get("title") for r in records])
                for rec, body in zip(records, bodies):
                    meta = dict(rec.metadata)
                    writer.add_document(tantivy.Document(
                        id=rec.id, doc_id=str(meta.get("doc_id", rec.id)), source=str(meta.get("source", "")),
                        body=" ".join(body), text=(rec.document or "").encode(), meta=meta,
                    ))
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            finally:
                writer.wait_merging_threads()

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        """Delete every row of these documents (one commit)."""
        self.write(delete_docs=doc_ids)

    def clear(self) -> None:
        """Delete every row (one commit)."""
        with _translate("clear", self.folder):
            writer = self._index.writer(WRITER_HEAP, 1)
            try:
                writer.delete_all_documents()
                writer.commit()
            finally:
                writer.wait_merging_threads()

    # -- reads ----------------------------------------------------------------------------------
    def _searcher(self) -> Any:
        """A searcher at the latest commit of any process (reloads only when ``meta.json`` changed)."""
        try:
            st = (self.folder / "meta.json").stat()
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        with self._lock:
            if seen != self._seen:
                with _translate("reload", self.folder):
                    self._index.reload()
                self._seen = seen
            return self._index.searcher()

    def count(self) -> int:
        """Number of rows."""
        with _translate("count", self.folder):
            return int(self._searcher().num_docs)

    def doc_counts(self) -> dict[str, int]:
        """Rows per document (a terms aggregation over the ``doc_id`` column; for repairs only)."""
        tantivy = _tantivy()
        searcher = self._searcher()
        n = int(searcher.num_docs)
        if n == 0:
            return {}
        with _translate("count documents", self.folder):
            agg = searcher.aggregate(tantivy.Query.all_query(), {"d": {"terms": {"field": "doc_id", "size": n}}})
        return {b["key"]: int(b["doc_count"]) for b in agg["d"]["buckets"]}

    def rows(self) -> Iterator[tuple[str, dict[str, Any], str]]:
        """Yield ``(id, metadata, text)`` of every row, ordered by id (snapshots, tests, migrations)."""
        tantivy = _tantivy()
        searcher = self._searcher()
        n = int(searcher.num_docs)
        if n == 0:
            return
        with _translate("read", self.folder):
            hits = searcher.search(tantivy.Query.all_query(), n).hits
            docs = [searcher.doc(addr).to_dict() for _, addr in hits]
        for d in sorted(docs, key=lambda d: d["id"][0]):
            yield d["id"][0], dict(d["meta"][0]), _text(d)

    def query(self, text: str, k: int, *, where: Mapping[str, Any] | None = None,
              source_prefix: str | None = None) -> list[Hit]:
        """Top ``k`` chunks by BM25 score (only chunks that share a term with the query).

        Args:
            text: the query.
            k: hits wanted.
            where: a Chroma-style metadata filter (checked by :func:`mmrag.keyword.check_where`),
                evaluated by tantivy before the top ``k`` is taken.
            source_prefix: keep only chunks whose source path starts with this.
        """
        tokens = analyze(text)
        if k <= 0 or not tokens:
            return []
        tantivy = _tantivy()
        Q, Occur = tantivy.Query, tantivy.Occur
        clauses = [(Occur.Must, Q.boolean_query([(Occur.Should, Q.term_query(self._schema, "body", t)) for t in tokens]))]
        filters = []
        if where:
            check_where(where, MAX_INDEX_CONDITIONS)  # an int past int64 made tantivy raise ValueError: a 500, not a 400
            try:
                filters.append(where_query(self._index, self._schema, where))
            except ValueError as exc:  # whatever else tantivy refuses in a filter is the client's
                if isinstance(exc, InvalidInputError):
                    raise
                raise InvalidInputError(f"where: the keyword index cannot evaluate this filter ({exc})") from exc
        if source_prefix:
            filters.append(Q.regex_query(self._schema, "source", re.escape(source_prefix) + ".*"))
        # A filter must not add to the BM25 score: wrap it in a zero constant score.
        clauses += [(Occur.Must, Q.const_score_query(f, 0.0)) for f in filters]
        searcher = self._searcher()
        with _translate("search", self.folder):
            result = searcher.search(Q.boolean_query(clauses), k, count=False)
            found = [(float(score), searcher.doc(addr).to_dict()) for score, addr in result.hits]
        hits = []
        for score, d in found:
            meta = dict(d["meta"][0])
            page = meta.get("page")
            hits.append(Hit(id=d["id"][0], doc_id=d["doc_id"][0], source=str(meta.get("source", "")), modality="text",
                            score=score, page=page if isinstance(page, int) and not isinstance(page, bool) else None,
                            text=_text(d) or None, metadata=meta))
        return hits


def _text(doc: Mapping[str, Any]) -> str:
    return bytes(doc.get("text", [b""])[0]).decode()


def where_query(index: Any, schema: Any, where: Mapping[str, Any]) -> Any:
    """Translate a Chroma ``where`` into a tantivy query with Chroma's semantics.

    A missing key fails every operator but ``$ne``/``$nin``; ``1 == 1.0`` but ``True != 1``; the
    order operators compare numbers only (checked against Chroma 1.5.9 in the contract tests).

    Raises:
        InvalidInputError: an order operator on a key the query grammar cannot name.
    """
    tantivy = _tantivy()
    Q, Occur = tantivy.Query, tantivy.Occur
    parts = []
    for key, cond in where.items():
        if key in ("$and", "$or"):
            subs = [where_query(index, schema, c) for c in cond]
            occur = Occur.Must if key == "$and" else Occur.Should
            parts.append(Q.boolean_query([(occur, s) for s in subs]))
            continue
        op, arg = next(iter(cond.items())) if isinstance(cond, Mapping) else ("$eq", cond)
        field = "meta." + key.replace(".", "\\.")
        if op == "$eq":
            parts.append(Q.term_query(schema, field, arg))
        elif op == "$ne":
            parts.append(_not(Q, Occur, Q.term_query(schema, field, arg)))
        elif op in ("$in", "$nin"):
            anyof = Q.boolean_query([(Occur.Should, Q.term_query(schema, field, a)) for a in arg]) if arg else Q.empty_query()
            parts.append(anyof if op == "$in" else _not(Q, Occur, anyof))
        else:
            parts.append(_range(index, key, op, arg))
    return parts[0] if len(parts) == 1 else Q.boolean_query([(Occur.Must, p) for p in parts])


def _not(Q: Any, Occur: Any, query: Any) -> Any:
    return Q.boolean_query([(Occur.Must, Q.all_query()), (Occur.MustNot, query)])


def _range(index: Any, key: str, op: str, arg: Any) -> Any:
    # tantivy's Python API has no range query on a JSON path; its query grammar has one.
    if not _SAFE_KEY.match(key):
        raise InvalidInputError(f"where.{key}: {op} needs a key of letters, digits, '_' or '-'")
    if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg):
        return _tantivy().Query.empty_query()  # Chroma compares numbers only
    return index.parse_query(f"meta.{key}:{_RANGE[op]}{arg!r}", [])
