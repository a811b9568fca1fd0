"""The durable per-document manifest that makes ingestion incremental and resumable.

A SQLite file (WAL, ``synchronous=FULL``) under the data directory. Each document moves
``pending -> done`` (or ``failed``/``skipped``) in its own committed transaction, and the store is
written only while its row says ``pending``; a run killed at any instant therefore leaves every
document either untouched, ``done`` with its records complete, or ``pending``, which the next run
redoes from scratch (delete its records, write them again). Record ids are deterministic, so a redo
produces exactly what an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mmrag.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection   TEXT NOT NULL,
    doc_id       TEXT NOT NULL,
    source       TEXT NOT NULL,
    doc_type     TEXT NOT NULL DEFAULT '',
    content_hash TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'skipped')),
    reason       TEXT NOT NULL DEFAULT '',
    n_clip       INTEGER NOT NULL DEFAULT 0,
    n_text       INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (collection, doc_id)
);
CREATE INDEX IF NOT EXISTS documents_source ON documents (collection, source);
-- The most recently updated documents (drift scores them): a range read, not a sort of the collection.
CREATE INDEX IF NOT EXISTS documents_updated ON documents (collection, status, updated_at);
CREATE TABLE IF NOT EXISTS files (
    collection TEXT NOT NULL,
    source     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    PRIMARY KEY (collection, source)
);
CREATE TABLE IF NOT EXISTS status_counts (
    collection TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    n_clip     INTEGER NOT NULL,
    n_text     INTEGER NOT NULL,
    PRIMARY KEY (collection, status)
);
CREATE TABLE IF NOT EXISTS flags (
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (collection, name)
);
""" + """
-- The index lifecycle (mmrag.lifecycle). A knowledge base name (kb) is an alias for one live
-- version; each version is a physical collection with its own rows above. JSON in TEXT columns.
CREATE TABLE IF NOT EXISTS versions (
    kb         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    physical   TEXT NOT NULL UNIQUE,
    state      TEXT NOT NULL CHECK (state IN ('building', 'ready', 'failed')),
    created_at REAL NOT NULL,
    settings   TEXT NOT NULL DEFAULT '{}',
    figures    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (kb, version)
);
CREATE TABLE IF NOT EXISTS alias_history (
    kb      TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    version INTEGER NOT NULL,
    at      REAL NOT NULL,
    reason  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (kb, seq)
);
CREATE TABLE IF NOT EXISTS probes (
    kb         TEXT NOT NULL,
    name       TEXT NOT NULL,
    query      TEXT NOT NULL,
    expect     TEXT NOT NULL,
    k          INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (kb, name)
);
CREATE TABLE IF NOT EXISTS drift_refs (
    collection TEXT NOT NULL,
    modality   TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (collection, modality)
);
CREATE TABLE IF NOT EXISTS events (
    kb     TEXT NOT NULL,
    at     REAL NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_kb ON events (kb, at);
-- The folders (or single files) a knowledge base was ingested from, kept per knowledge base (a kb
-- name; every version reads the same sources): doctor's repair and reindex read sources only under
-- them (mmrag.lifecycle.roots), so a planted manifest row cannot make them read any file.
CREATE TABLE IF NOT EXISTS roots (
    kb       TEXT NOT NULL,
    root     TEXT NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (kb, root)
);
"""
#: The knowledge base a physical collection (bound as two parameters) belongs to: its versions
#: row's, else its own name (an unversioned knowledge base).
KB_OF = "COALESCE((SELECT kb FROM versions WHERE physical=?), ?)"
#: A collection's own rows per table, their columns in table order after ``collection`` (the
#: primary key's second column first): what a snapshot copies and a restore writes back.
COLLECTION_TABLES: dict[str, tuple[str, ...]] = {
    "documents": ("doc_id", "source", "doc_type", "content_hash", "status", "reason", "n_clip", "n_text",
                  "updated_at"),
    "files": ("source", "size", "mtime_ns", "sha256"),
    "flags": ("name", "value"),
}


@dataclass(frozen=True)
class DocState:
    """One manifest row."""

    doc_id: str
    source: str
    doc_type: str
    content_hash: str
    status: str
    reason: str
    n_clip: int
    n_text: int


#: Triggers keep ``status_counts`` equal to a GROUP BY over ``documents``, in the same transaction
#: as every change, so status counts and record totals are a few-row read at any size (the GROUP BY
#: itself takes 0.3-0.5 s at 1M documents).
TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS documents_counted_insert AFTER INSERT ON documents BEGIN
    INSERT INTO status_counts VALUES (new.collection, new.status, 1, new.n_clip, new.n_text)
    ON CONFLICT (collection, status) DO UPDATE SET n = n + 1, n_clip = n_clip + new.n_clip, n_text = n_text + new.n_text;
END;
CREATE TRIGGER IF NOT EXISTS documents_counted_delete AFTER DELETE ON documents BEGIN
    UPDATE status_counts SET n = n - 1, n_clip = n_clip - old.n_clip, n_text = n_text - old.n_text
    WHERE collection = old.collection AND status = old.status;
END;
CREATE TRIGGER IF NOT EXISTS documents_counted_update AFTER UPDATE ON documents BEGIN
    UPDATE status_counts SET n = n - 1, n_clip = n_clip - old.n_clip, n_text = n_text - old.n_text
    WHERE collection = old.collection AND status = old.status;
    INSERT INTO status_counts VALUES (new.collection, new.status, 1, new.n_clip, new.n_text)
    ON CONFLICT (collection, status) DO UPDATE SET n = n + 1, n_clip = n_clip + new.n_clip, n_text = n_text + new.n_text;
END;
"""
#: A root per document of a manifest written before roots were recorded: the folder its doc id is
#: relative to (the source less the doc id), or the file itself (a JSONL corpus, a file ingested on
#: its own), which is what the ingest that wrote the row was given.
BACKFILL_ROOTS = """
INSERT OR IGNORE INTO roots
SELECT DISTINCT COALESCE((SELECT kb FROM versions WHERE physical=collection), collection), COALESCE(NULLIF(CASE
    WHEN lower(source) LIKE '%.jsonl' THEN source
    WHEN substr(source, length(source) - length(doc_id)) = '/' || doc_id
        THEN substr(source, 1, length(source) - length(doc_id) - 1)
    ELSE source END, ''), '/'), ?
FROM documents WHERE status != 'skipped'
"""
#: ``PRAGMA user_version``: 1 added the counting triggers, 2 the ``roots`` table (backfilled once).
SCHEMA_VERSION = 2


@contextlib.contextmanager
def _translate(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        hint = " (the disk may be full)" if "full" in str(exc).lower() else ""
        raise StoreError(f"Cannot {action} the manifest {path}: {exc}{hint}") from exc


class Manifest:
    """Per-collection document states in ``DATA_DIR/manifest.sqlite3``.

    Each thread gets its own connection (a sqlite3 connection may not be shared across threads,
    and the HTTP server answers from a thread pool); WAL mode lets them read while one writes.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        # Every connection with the thread that opened it and the lock held while it is in use, so
        # close() reaches them all, waits for a query in flight in another thread (closing a
        # connection under a running query crashed the process: a server's drift thread at
        # shutdown), and the connections of threads that have ended are closed (see _db).
        self._all: list[tuple[threading.Thread, sqlite3.Connection, threading.RLock]] = []
        self._guard = threading.Lock()
        with _translate("open", path), self._use() as db:
            db.executescript(SCHEMA)
            self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a manifest written by an older mmrag up to :data:`SCHEMA_VERSION`, one step at a time (once).

        1: add the counting triggers and count what it holds. 2: record the roots its documents
        were ingested from (:data:`BACKFILL_ROOTS`).
        """
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            if version < 1:
                for trigger in TRIGGERS.split("END;")[:-1]:  # executescript would commit the transaction
                    db.execute(trigger + "END;")
                db.execute("DELETE FROM status_counts")
                db.execute("INSERT INTO status_counts SELECT collection, status, COUNT(*), SUM(n_clip), SUM(n_text) "
                           "FROM documents GROUP BY collection, status")
            if version < 2:
                db.execute(BACKFILL_ROOTS, (time.time(),))
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held (against :meth:`close` in another thread) while in use."""
        db = self._db
        with self._local.lock:
            yield db

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise StoreError(f"Cannot open the manifest {self.path}: {exc}") from exc
            self._local.db, self._local.lock = db, threading.RLock()
            with self._guard:
                # A server's thread pool retires idle threads and starts new ones (anyio after 10 s
                # idle): each new thread opens a connection here, so without this the connections
                # of ended threads (two or three descriptors each) would pile up for good.
                ended = [conn for thread, conn, _ in self._all if not thread.is_alive()]
                self._all = [entry for entry in self._all if entry[0].is_alive()]
                self._all.append((threading.current_thread(), db, self._local.lock))
            for conn in ended:
                conn.close()
        return db

    def open_connections(self) -> int:
        """How many sqlite connections this manifest holds (one per live thread that used it)."""
        with self._guard:
            return len(self._all)

    def close(self) -> None:
        """Close every thread's connection, each once no query runs on it."""
        with self._guard:
            entries, self._all = self._all, []
            self._local = threading.local()
        for _, db, lock in entries:
            with lock:
                db.close()

    def write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        """Run ``sql`` once per row in one transaction (for the lifecycle tables' owners in :mod:`mmrag.lifecycle`)."""
        self._write(sql, rows)

    def read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a query (for the lifecycle tables' owners in :mod:`mmrag.lifecycle`)."""
        return self._read(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction on this thread's connection: committed on exit, rolled back on error.

        For changes that must be atomic across tables (an alias switch and its audit event).
        """
        with _translate("write", self.path), self._use() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with _translate("write", self.path), self._use() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
                db.execute("COMMIT")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with _translate("read", self.path), self._use() as db:
            return db.execute(sql, args).fetchall()

    def get(self, collection: str, doc_id: str) -> DocState | None:
        """Return one document's state, or None."""
        rows = self._read(
            "SELECT doc_id, source, doc_type, content_hash, status, reason, n_clip, n_text "
            "FROM documents WHERE collection=? AND doc_id=?", (collection, doc_id),
        )
        return DocState(*rows[0]) if rows else None  # type: ignore[arg-type]

    def all(self, collection: str, status: str | None = None) -> Iterator[DocState]:
        """Every document of a collection, optionally of one status, ordered by doc id."""
        for row in self._by_doc_id("", collection, status):
            yield DocState(*row)  # type: ignore[arg-type]

    def listing(self, collection: str, status: str | None = None) -> list[tuple[DocState, float]]:
        """Every document of a collection (optionally of one status) with its last update time, by doc id."""
        return [(DocState(*row[:8]), float(row[8])) for row in self._by_doc_id(", updated_at", collection, status)]  # type: ignore[arg-type]

    def _by_doc_id(self, extra_columns: str, collection: str, status: str | None) -> list[tuple[object, ...]]:
        """A collection's rows (a DocState's columns, then ``extra_columns``), optionally of one status, by doc id.

        A listing of one status is sorted here, not by ``ORDER BY``: SQLite then walked the primary
        key in doc-id order to skip the sort, reading every row of the collection to find the few
        pending ones (0.17 s at 1M documents, before every ingest). (:meth:`under` keeps its
        ``ORDER BY``: SQLite searches its source index and sorts the few rows found.)
        Python's order of ``str`` is SQLite's BINARY order of their UTF-8 bytes.
        """
        sql = ("SELECT doc_id, source, doc_type, content_hash, status, reason, n_clip, n_text"
               f"{extra_columns} FROM documents WHERE collection=?")
        if not status:
            return self._read(sql + " ORDER BY doc_id", (collection,))
        return sorted(self._read(sql + " AND status=?", (collection, status)), key=lambda row: str(row[0]))

    def under(self, collection: str, prefix: str) -> Iterator[DocState]:
        """Documents whose source path starts with ``prefix``, by an index range scan on ``source``."""
        # [prefix, prefix + U+10FFFF) holds exactly the strings that start with prefix.
        rows = self._read(
            "SELECT doc_id, source, doc_type, content_hash, status, reason, n_clip, n_text "
            "FROM documents WHERE collection=? AND source>=? AND source<? ORDER BY doc_id",
            (collection, prefix, prefix + "\U0010ffff"),
        )
        for row in rows:
            yield DocState(*row)  # type: ignore[arg-type]

    def doc_ids_under(self, collection: str, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` doc ids whose source path starts with ``prefix`` (an index range scan)."""
        rows = self._read(
            "SELECT doc_id FROM documents WHERE collection=? AND source>=? AND source<? LIMIT ?",
            (collection, prefix, prefix + "\U0010ffff", limit),
        )
        return sorted(str(r[0]) for r in rows)

    def file_stamp(self, collection: str, source: str) -> tuple[int, int, str] | None:
        """The (size, mtime_ns, sha256) a file had when it was last hashed, or None."""
        rows = self._read("SELECT size, mtime_ns, sha256 FROM files WHERE collection=? AND source=?", (collection, source))
        return (int(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None  # type: ignore[arg-type]

    def set_file_stamps(self, collection: str, stamps: Iterable[tuple[str, int, int, str]]) -> None:
        """Remember files' (source, size, mtime_ns, sha256), so an unchanged file is not hashed again."""
        self._write("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)", [(collection, *s) for s in stamps])

    def counts(self, collection: str) -> dict[str, int]:
        """Number of documents per status."""
        rows = self._read("SELECT status, n FROM status_counts WHERE collection=? AND n > 0", (collection,))
        return {str(status): int(n) for status, n in rows}  # type: ignore[call-overload]

    def totals(self, collection: str) -> tuple[int, int]:
        """Sum of (clip records, text records) the store should hold for settled documents.

        Failed rows can hold records too: a previously indexed version kept after an update failed.
        """
        row = self._read(
            "SELECT COALESCE(SUM(n_clip),0), COALESCE(SUM(n_text),0) FROM status_counts WHERE collection=? AND status!='pending'",
            (collection,),
        )[0]
        return int(row[0]), int(row[1])  # type: ignore[call-overload]

    def totals_by_labels(self, collection: str, labels_of: str, args: tuple[object, ...] = ()
                         ) -> list[tuple[str, int, int, int]]:
        """``(labels, documents, clip records, text records)`` per distinct label set ('' for none).

        Counts what :meth:`totals` counts (every status but ``pending``), grouped by the labels that
        ``labels_of``, a SQL expression over the document ``d`` with ``args`` for its placeholders, gives it
        (the access layer's table,
        :class:`mmrag.security.rules.LabelTable`, owns that expression; the documents stay this module's).
        """
        rows = self._read(
            f"SELECT COALESCE(({labels_of}), ''), COUNT(*), COALESCE(SUM(d.n_clip), 0), COALESCE(SUM(d.n_text), 0) "
            "FROM documents d WHERE d.collection=? AND d.status!='pending' GROUP BY 1", (*args, collection))
        return [(str(ls), int(n), int(c), int(t)) for ls, n, c, t in rows]  # type: ignore[call-overload]

    def set_states(self, collection: str, states: Iterable[DocState]) -> None:
        """Insert or replace document states in one transaction."""
        now = time.time()
        self._write(
            # An upsert, not INSERT OR REPLACE: REPLACE's implicit delete would skip the delete trigger.
            "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (collection, doc_id) DO UPDATE SET "
            "source=excluded.source, doc_type=excluded.doc_type, content_hash=excluded.content_hash, "
            "status=excluded.status, reason=excluded.reason, n_clip=excluded.n_clip, n_text=excluded.n_text, "
            "updated_at=excluded.updated_at",
            [(collection, s.doc_id, s.source, s.doc_type, s.content_hash, s.status, s.reason, s.n_clip, s.n_text, now) for s in states],
        )

    def remove(self, collection: str, doc_ids: Iterable[str]) -> None:
        """Forget documents."""
        self._write("DELETE FROM documents WHERE collection=? AND doc_id=?", [(collection, d) for d in doc_ids])

    def remove_collection(self, collection: str) -> None:
        """Forget a whole collection."""
        for table in ("documents", "files", "flags", "status_counts", "drift_refs"):
            self._write(f"DELETE FROM {table} WHERE collection=?", [(collection,)])

    def add_roots(self, collection: str, roots: Iterable[str]) -> None:
        """Remember folders (or files) ``collection`` was ingested from, as absolute paths, for its knowledge base.

        Kept per knowledge base, not per version: a reindexed version reads the same sources, and
        pruning the version that was ingested must not forget them. Doctor's repair and reindex
        read a document's source only under one of them (see :mod:`mmrag.lifecycle.roots`); the
        rows go when the knowledge base is dropped whole (``mmrag reset``).
        """
        roots = sorted(set(roots))
        known = set(self.roots(collection))  # a read first: most ingests repeat known roots, and a write fsyncs
        now = time.time()
        if new := [r for r in roots if r not in known]:
            self._write(f"INSERT OR IGNORE INTO roots VALUES ({KB_OF},?,?)",
                        [(collection, collection, r, now) for r in new])

    def roots(self, collection: str) -> list[str]:
        """The roots recorded for ``collection``'s knowledge base (see :meth:`add_roots`), sorted."""
        return [str(r[0]) for r in self._read(f"SELECT root FROM roots WHERE kb={KB_OF} ORDER BY root",
                                              (collection, collection))]

    def flag(self, collection: str, name: str) -> str | None:
        """Read a per-collection flag."""
        rows = self._read("SELECT value FROM flags WHERE collection=? AND name=?", (collection, name))
        return str(rows[0][0]) if rows else None

    def set_flag(self, collection: str, name: str, value: str | None) -> None:
        """Set (or clear, with None) a per-collection flag."""
        if value is None:
            self._write("DELETE FROM flags WHERE collection=? AND name=?", [(collection, name)])
        else:
            self._write("INSERT OR REPLACE INTO flags VALUES (?,?,?)", [(collection, name, value)])

    def has_collection(self, collection: str) -> bool:
        """Whether any document of ``collection`` is recorded (an index lookup, unlike :meth:`collections`)."""
        return bool(self._read("SELECT 1 FROM documents WHERE collection=? LIMIT 1", (collection,)))

    def collections(self) -> list[str]:
        """Names of collections the manifest knows."""
        return [str(r[0]) for r in self._read("SELECT DISTINCT collection FROM documents ORDER BY 1", ())]

    # -- whole collections, as snapshots copy them ----------------------------------------------
    def recent(self, collection: str, status: str, n: int) -> list[str]:
        """The ``n`` most recently updated documents of ``collection`` with ``status``, newest first."""
        rows = self._read("SELECT doc_id FROM documents WHERE collection=? AND status=? ORDER BY updated_at DESC "
                          "LIMIT ?", (collection, status, int(n)))
        return [str(r[0]) for r in rows]

    def sources(self, collection: str) -> list[str]:
        """The distinct sources of ``collection``'s documents."""
        return [str(r[0]) for r in self._read("SELECT DISTINCT source FROM documents WHERE collection=?", (collection,))]

    def has_flags(self, collection: str) -> bool:
        """Whether any flag of ``collection`` is set (a name left behind by a drop, or in use)."""
        return bool(self._read("SELECT 1 FROM flags WHERE collection=? LIMIT 1", (collection,)))

    def export_rows(self, table: str, collection: str, page: int = 5000) -> Iterator[dict[str, object]]:
        """``collection``'s rows of ``table`` (a key of :data:`COLLECTION_TABLES`) as dicts, streamed.

        Keyset pages on the primary key: a million document rows are never read at once.
        """
        columns = COLLECTION_TABLES[table]
        sql = (f"SELECT {', '.join(columns)} FROM {table} WHERE collection=? AND {columns[0]}>? "
               f"ORDER BY {columns[0]} LIMIT ?")
        last = ""
        while rows := self._read(sql, (collection, last, page)):
            for row in rows:
                yield dict(zip(columns, row))
            last = str(rows[-1][0])

    @staticmethod
    def import_rows(db: sqlite3.Connection, table: str, collection: str, rows: Iterable[tuple[object, ...]]) -> None:
        """Add rows of ``table``'s :data:`COLLECTION_TABLES` columns to ``collection``, in the caller's transaction.

        Flags go in with ``OR REPLACE``: opening the restored stores may already have set one
        (``images_split``) to the value the snapshot carries.
        """
        width = len(COLLECTION_TABLES[table]) + 1
        verb = "INSERT OR REPLACE" if table == "flags" else "INSERT"
        db.executemany(f"{verb} INTO {table} VALUES ({','.join('?' * width)})", ((collection, *row) for row in rows))

    @staticmethod
    def replace_roots(db: sqlite3.Connection, kb_name: str, roots: Iterable[str]) -> None:
        """Set knowledge base ``kb_name``'s roots to exactly ``roots``, in the caller's transaction (a restore)."""
        now = time.time()
        db.execute("DELETE FROM roots WHERE kb=?", (kb_name,))
        db.executemany("INSERT INTO roots VALUES (?,?,?)", [(kb_name, r, now) for r in roots])

    def remove_roots(self, kb_name: str, db: sqlite3.Connection | None = None) -> None:
        """Forget knowledge base ``kb_name``'s roots (kept per knowledge base, so a collection's drop leaves them).

        ``db``: the caller's open transaction, to forget them atomically with other owners' rows.
        """
        if db is None:
            self._write("DELETE FROM roots WHERE kb=?", [(kb_name,)])
        else:
            db.execute("DELETE FROM roots WHERE kb=?", (kb_name,))
