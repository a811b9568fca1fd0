"""The durable per-document manifest that makes ingestion incremental and resumable.

A SQLite file (WAL, ``synchronous=FULL``) under the data directory. Each document moves
``pending -> done`` (or ``failed``/``skipped``) in its own committed transaction, and the store is
written only while its row says ``pending``; a run killed at any instant therefore leaves every
document either untouched, ``done`` with its records complete, or ``pending``, which the next run
redoes from scratch (delete its records, write them again). Record ids are deterministic, so a redo
produces exactly what an uninterrupted run would.
"""

from __future__ import annotations

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
CREATE TABLE IF NOT EXISTS flags (
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (collection, name)
);
"""


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


class Manifest:
    """Per-collection document states in ``DATA_DIR/manifest.sqlite3``.

    Each thread gets its own connection (a sqlite3 connection may not be shared across threads,
    and the HTTP server answers from a thread pool); WAL mode lets them read while one writes.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        try:
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the manifest {path}: {exc}") from exc

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
            self._local.db = db
            with self._guard:
                self._all.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection."""
        with self._guard:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK") if self._db.in_transaction else None
            raise StoreError(f"Cannot write the manifest {self.path}: {exc}") from exc

    def get(self, collection: str, doc_id: str) -> DocState | None:
        """Return one document's state, or None."""
        row = self._db.execute(
            "SELECT doc_id, source, doc_type, content_hash, status, reason, n_clip, n_text "
            "FROM documents WHERE collection=? AND doc_id=?", (collection, doc_id),
        ).fetchone()
        return DocState(*row) if row else None

    def all(self, collection: str, status: str | None = None) -> Iterator[DocState]:
        """Every document of a collection, optionally of one status, ordered by doc id."""
        sql = "SELECT doc_id, source, doc_type, content_hash, status, reason, n_clip, n_text FROM documents WHERE collection=?"
        args: tuple[object, ...] = (collection,)
        if status:
            sql += " AND status=?"
            args += (status,)
        for row in self._db.execute(sql + " ORDER BY doc_id", args).fetchall():
            yield DocState(*row)

    def counts(self, collection: str) -> dict[str, int]:
        """Number of documents per status."""
        rows = self._db.execute(
            "SELECT status, COUNT(*) FROM documents WHERE collection=? GROUP BY status", (collection,)
        ).fetchall()
        return {status: n for status, n in rows}

    def totals(self, collection: str) -> tuple[int, int]:
        """Sum of (clip records, text records) the store should hold for settled documents.

        Failed rows can hold records too: a previously indexed version kept after an update failed.
        """
        row = self._db.execute(
            "SELECT COALESCE(SUM(n_clip),0), COALESCE(SUM(n_text),0) FROM documents WHERE collection=? AND status!='pending'",
            (collection,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def set_states(self, collection: str, states: Iterable[DocState]) -> None:
        """Insert or replace document states in one transaction."""
        now = time.time()
        self._write(
            "INSERT OR REPLACE INTO documents VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(collection, s.doc_id, s.source, s.doc_type, s.content_hash, s.status, s.reason, s.n_clip, s.n_text, now) for s in states],
        )

    def remove(self, collection: str, doc_ids: Iterable[str]) -> None:
        """Forget documents."""
        self._write("DELETE FROM documents WHERE collection=? AND doc_id=?", [(collection, d) for d in doc_ids])

    def remove_collection(self, collection: str) -> None:
        """Forget a whole collection."""
        self._write("DELETE FROM documents WHERE collection=?", [(collection,)])
        self._write("DELETE FROM flags WHERE collection=?", [(collection,)])

    def flag(self, collection: str, name: str) -> str | None:
        """Read a per-collection flag."""
        row = self._db.execute("SELECT value FROM flags WHERE collection=? AND name=?", (collection, name)).fetchone()
        return row[0] if row else None

    def set_flag(self, collection: str, name: str, value: str | None) -> None:
        """Set (or clear, with None) a per-collection flag."""
        if value is None:
            self._write("DELETE FROM flags WHERE collection=? AND name=?", [(collection, name)])
        else:
            self._write("INSERT OR REPLACE INTO flags VALUES (?,?,?)", [(collection, name, value)])

    def has_collection(self, collection: str) -> bool:
        """Whether any document of ``collection`` is recorded (an index lookup, unlike :meth:`collections`)."""
        return self._db.execute("SELECT 1 FROM documents WHERE collection=? LIMIT 1", (collection,)).fetchone() is not None

    def collections(self) -> list[str]:
        """Names of collections the manifest knows."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT collection FROM documents ORDER BY 1").fetchall()]
