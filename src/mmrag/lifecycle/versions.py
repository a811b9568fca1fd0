"""Versioned collections behind an alias: ``kb`` names one live version ``kb@N``.

Each version is a complete physical collection (its own Chroma collections, keyword index, manifest
rows and writer lock), so everything that works on a collection works on a version unchanged, and
a new version is built beside the live one without touching it. The alias is a row history in the
manifest (``alias_history``): the live version is its last row, a promote appends a row and a
rollback deletes one, each in one SQLite transaction, so a switch is atomic and every process
sees it on its next lookup (a primary-key read).

Every step that reads the alias and then acts on it (promote, rollback, prune, the end of a
reindex, a drop) holds the knowledge base's lifecycle lock (:meth:`Versions.lock`, a file lock in
the data dir), so no two of them interleave, in one process or across processes. A version
number is never given twice: a server may still hold a pruned version's collections open.

A knowledge base written before versions existed has no rows: it is version 1 and its physical
collection is its own name. It is adopted (given a ``versions`` row) the first time a lifecycle
command touches it, with nothing copied. Later versions live in ``<kb>--v<N>``.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from mmrag import locks
from mmrag.chunking import ChunkSpec
from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.manifest import Manifest
from mmrag.registry import check_collection_name

#: The highest version number (``kb@999999``; labels in the API are at most 6 digits).
MAX_VERSION = 999_999
#: Seconds a lifecycle step waits for another one of the same knowledge base (``store.lock_timeout``).
LOCK_TIMEOUT = 600.0
#: ``kb@3``: a version named explicitly.
_LABEL = re.compile(r"^(?P<kb>[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<n>[0-9]+)$")
#: The physical collection of version N >= 2.
_PHYSICAL = re.compile(r"^(?P<kb>.+)--v(?P<n>[0-9]+)$")


def physical_name(kb_name: str, number: int) -> str:
    """The physical collection of ``kb@number`` (version 1 is the knowledge base's own name)."""
    return kb_name if number == 1 else f"{kb_name}--v{number}"


def split_label(name: str) -> tuple[str, int | None]:
    """``"kb@3"`` -> ``("kb", 3)``; ``"kb"`` -> ``("kb", None)``."""
    m = _LABEL.match(name)
    if m:
        return m.group("kb"), int(m.group("n"))
    return name, None


@dataclass(frozen=True)
class Version:
    """One version of a knowledge base."""

    kb_name: str
    number: int
    physical: str
    state: str  # building | ready | failed
    created_at: float
    #: What it was built with: ``chunk_size``, ``chunk_overlap``, ``clip``, ``text`` (identities), ``sources``.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Last measured figures: ``probes`` (recall, latency), ``eval`` (metric -> value), with times.
    figures: dict[str, Any] = field(default_factory=dict)
    live: bool = False

    @property
    def label(self) -> str:
        return f"{self.kb_name}@{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return {"kb": self.kb_name, "version": self.number, "label": self.label, "physical": self.physical,
                "state": self.state, "live": self.live, "created_at": self.created_at, "settings": self.settings,
                "figures": self.figures}


class Versions:
    """The versions and alias of every knowledge base in one manifest."""

    def __init__(self, manifest: Manifest, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.manifest = manifest
        self.lock_timeout = lock_timeout

    @contextlib.contextmanager
    def lock(self, kb_name: str) -> Iterator[None]:
        """Hold ``kb_name``'s lifecycle lock for the block (re-entrant in one thread; see :func:`mmrag.locks.lifecycle`).

        Take it around a read of the alias and the act that depends on it, and before any writer
        lock of a version, so that the two kinds of lock are always taken in the same order.

        Raises:
            StoreBusyError: another lifecycle step of ``kb_name`` held it past ``lock_timeout``.
        """
        with locks.lifecycle(self.manifest.path.parent, kb_name, timeout=self.lock_timeout):
            yield

    # -- reading --------------------------------------------------------------------------------
    def live_number(self, kb_name: str) -> int | None:
        """The live version of ``kb_name``, or None when it has no alias yet (unversioned: version 1)."""
        rows = self.manifest.read("SELECT version FROM alias_history WHERE kb=? ORDER BY seq DESC LIMIT 1", (kb_name,))
        return int(rows[0][0]) if rows else None  # type: ignore[call-overload]

    def resolve(self, name: str) -> str:
        """The physical collection a name stands for: ``kb`` -> its live version, ``kb@N`` -> version N.

        A name with no versions is its own physical collection (the knowledge bases of before).

        Raises:
            NotFoundError: ``kb@N`` names a version that does not exist.
        """
        kb, number = split_label(name)
        if number is None:
            check_collection_name(name)
            # Read on every request of a server: one indexed join, the newest alias row's version.
            rows = self.manifest.read(
                "SELECT v.physical FROM alias_history a JOIN versions v ON v.kb = a.kb AND v.version = a.version "
                "WHERE a.kb=? ORDER BY a.seq DESC LIMIT 1", (name,))
            return str(rows[0][0]) if rows else name
        check_collection_name(kb)
        return self.get(kb, number).physical

    def chunk_spec(self, physical: str, default: ChunkSpec) -> ChunkSpec:
        """The chunk sizing ``physical`` was built with (``reindex --chunk-size``), else ``default``.

        A version keeps its chunk size for every later write, whoever writes it (CLI or server).
        """
        rows = self.manifest.read("SELECT settings FROM versions WHERE physical=?", (physical,))
        built = json.loads(str(rows[0][0])) if rows else {}
        return ChunkSpec(int(built.get("chunk_size") or default.size), int(built.get("chunk_overlap") or default.overlap))

    def get(self, kb_name: str, number: int) -> Version:
        """One version.

        Raises:
            NotFoundError: there is no such version.
        """
        if not 1 <= number <= MAX_VERSION:
            raise NotFoundError(f"{kb_name}@{number} does not exist: versions are numbered 1 to {MAX_VERSION}; "
                                f"`mmrag versions {kb_name}` lists them")
        rows = self.manifest.read("SELECT kb, version, physical, state, created_at, settings, figures FROM versions "
                                  "WHERE kb=? AND version=?", (kb_name, number))
        if not rows:
            if number == 1 and self.manifest.has_collection(kb_name):
                return Version(kb_name, 1, kb_name, "ready", 0.0, live=self.live_number(kb_name) in (None, 1))
            raise NotFoundError(f"{kb_name}@{number} does not exist; `mmrag versions {kb_name}` lists its versions")
        return self._version(rows[0], self.live_number(kb_name))

    def list(self, kb_name: str) -> list[Version]:
        """Every version of ``kb_name``, oldest first (an unversioned knowledge base shows as version 1)."""
        live = self.live_number(kb_name)
        rows = self.manifest.read("SELECT kb, version, physical, state, created_at, settings, figures FROM versions "
                                  "WHERE kb=? ORDER BY version", (kb_name,))
        versions = [self._version(r, live) for r in rows]
        if not versions and self.manifest.has_collection(kb_name):
            versions = [Version(kb_name, 1, kb_name, "ready", 0.0, live=True)]
        return versions

    def owner(self, physical: str) -> tuple[str, int] | None:
        """The (kb, version) a physical collection belongs to, or None for an unversioned one."""
        rows = self.manifest.read("SELECT kb, version FROM versions WHERE physical=?", (physical,))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None  # type: ignore[call-overload]

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a versioned knowledge base or one of their versions' collections."""
        return bool(self.manifest.read("SELECT 1 FROM versions WHERE kb=? OR physical=? LIMIT 1", (name, name)))

    def label_of(self, physical: str) -> str:
        """``kb@N`` for a version's physical collection; ``<name>@1`` for an unversioned one."""
        owner = self.owner(physical)
        return f"{owner[0]}@{owner[1]}" if owner else f"{physical}@1"

    def knowledge_bases(self, collections: list[str]) -> list[str]:
        """Knowledge base names for a list of physical collections (versions folded into their kb)."""
        physical = {str(r[0]): str(r[1]) for r in self.manifest.read("SELECT physical, kb FROM versions", ())}
        return sorted({physical.get(c, c) for c in collections})

    def events(self, kb_name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The audit log of ``kb_name``'s promotes, rollbacks, forced overrides and prunes, newest first."""
        rows = self.manifest.read("SELECT at, kind, detail FROM events WHERE kb=? ORDER BY at DESC LIMIT ?", (kb_name, limit))
        return [{"at": r[0], "kind": r[1], **json.loads(str(r[2]))} for r in rows]

    # -- writing --------------------------------------------------------------------------------
    def adopt(self, kb_name: str) -> Version:
        """Give an unversioned knowledge base its version-1 row and alias (nothing is copied); idempotent."""
        check_collection_name(kb_name)
        now = time.time()
        with self.manifest.transaction() as db:
            if not db.execute("SELECT 1 FROM versions WHERE kb=? AND version=1", (kb_name,)).fetchone():
                db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?)", (kb_name, 1, kb_name, "ready", now, "{}", "{}"))
            if not db.execute("SELECT 1 FROM alias_history WHERE kb=?", (kb_name,)).fetchone():
                db.execute("INSERT INTO alias_history VALUES (?,?,?,?,?)", (kb_name, 1, 1, now, "adopted"))
        return self.get(kb_name, 1)

    def begin(self, kb_name: str, settings: dict[str, Any]) -> Version:
        """Reserve the next version number of ``kb_name`` for a build (state ``building``)."""
        check_collection_name(kb_name)
        if _PHYSICAL.match(kb_name):
            raise InvalidInputError(f"{kb_name!r} looks like a version's own collection; reindex its knowledge base instead")
        now = time.time()
        with self.manifest.transaction() as db:
            top = db.execute("SELECT MAX(version) FROM versions WHERE kb=?", (kb_name,)).fetchone()[0] or 1
            # A pruned number stays spent: a server may hold the pruned version's collections open
            # under its physical name, and would answer from them if the name came back.
            for (detail,) in db.execute("SELECT detail FROM events WHERE kb=? AND kind='prune'", (kb_name,)):
                top = max(int(top), int(json.loads(detail).get("version") or 0))
            number = int(top) + 1
            physical = physical_name(kb_name, number)
            if self.manifest.has_collection(physical):  # this thread's connection: inside the transaction
                raise InvalidInputError(f"a collection named {physical!r} already exists and is not a version of "
                                        f"{kb_name!r}; rename or drop it before reindexing {kb_name!r}")
            db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?)",
                       (kb_name, number, physical, "building", now, json.dumps(settings, default=str), "{}"))
        return self.get(kb_name, number)

    def set_state(self, kb_name: str, number: int, state: str, settings: dict[str, Any] | None = None) -> None:
        """Mark a build ``ready`` or ``failed`` (and record what it ended with)."""
        if settings is None:
            self.manifest.write("UPDATE versions SET state=? WHERE kb=? AND version=?", [(state, kb_name, number)])
        else:
            self.manifest.write("UPDATE versions SET state=?, settings=? WHERE kb=? AND version=?",
                                [(state, json.dumps(settings, default=str), kb_name, number)])

    def record_figures(self, physical: str, what: str, figures: dict[str, Any]) -> None:
        """Store a version's last ``probes`` or ``eval`` figures (shown by ``mmrag versions``)."""
        owner = self.owner(physical)
        if owner is None:
            self.adopt(physical)
            owner = (physical, 1)
        kb, number = owner
        current = self.get(kb, number).figures
        current[what] = {**figures, "at": time.time()}
        self.manifest.write("UPDATE versions SET figures=? WHERE kb=? AND version=?",
                            [(json.dumps(current, default=str), kb, number)])

    def switch(self, kb_name: str, number: int, *, reason: str, detail: dict[str, Any] | None = None) -> Version:
        """Make ``kb@number`` live: one transaction appends the alias row and its audit event.

        Raises:
            NotFoundError: no such version.
            InvalidInputError: the version is not ``ready`` (still building, or its build failed).
        """
        with self.lock(kb_name):
            self.ready(kb_name, number)
            self.adopt_if_unversioned(kb_name)
            return self._switch(kb_name, number, reason, detail)

    def _switch(self, kb_name: str, number: int, reason: str, detail: dict[str, Any] | None) -> Version:
        now = time.time()
        with self.manifest.transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM alias_history WHERE kb=?", (kb_name,)).fetchone()[0]
            live = db.execute("SELECT version FROM alias_history WHERE kb=? ORDER BY seq DESC LIMIT 1",
                              (kb_name,)).fetchone()
            db.execute("INSERT INTO alias_history VALUES (?,?,?,?,?)", (kb_name, int(seq) + 1, number, now, reason))
            db.execute("INSERT INTO events VALUES (?,?,?,?)",
                       (kb_name, now, reason, json.dumps({"from": live[0] if live else None, "to": number, **(detail or {})},
                                                    default=str)))
        return self.get(kb_name, number)

    def ready(self, kb_name: str, number: int) -> Version:
        """``kb@number``, which must be ``ready`` to be served.

        Raises:
            NotFoundError: no such version.
            InvalidInputError: it is still building, or its build failed.
        """
        version = self.get(kb_name, number)
        if version.state != "ready":
            raise InvalidInputError(f"{version.label} is {version.state}, not ready; finish its build with "
                                    f"`mmrag reindex {kb_name}` (it resumes) or pick another version")
        return version

    def adopt_if_unversioned(self, kb_name: str) -> None:
        if self.live_number(kb_name) is None and self.manifest.has_collection(kb_name):
            self.adopt(kb_name)

    def history(self, kb_name: str) -> list[int]:
        """The alias history of ``kb_name``, oldest first: the last is live, the one before it is where a rollback goes."""
        return [int(r[0]) for r in self.manifest.read(  # type: ignore[call-overload]
            "SELECT version FROM alias_history WHERE kb=? ORDER BY seq", (kb_name,))]

    def previous(self, kb_name: str) -> int:
        """The version a rollback of ``kb_name`` returns to.

        Raises:
            InvalidInputError: ``kb_name`` has never been promoted, so there is nothing to return to.
        """
        rows = self.manifest.read("SELECT version FROM alias_history WHERE kb=? ORDER BY seq DESC LIMIT 2", (kb_name,))
        if len(rows) < 2:
            raise InvalidInputError(f"{kb_name!r} has no earlier live version to roll back to; `mmrag versions {kb_name}` "
                                    "lists its versions")
        return int(rows[1][0])  # type: ignore[call-overload]

    def rollback(self, kb_name: str, *, detail: dict[str, Any] | None = None) -> tuple[int, Version]:
        """Return ``kb_name`` to the version that was live before the current one (one transaction, under the lock).

        Returns:
            The version that was live, and the one that is live now.

        Raises:
            InvalidInputError: there is no earlier live version.
        """
        with self.lock(kb_name), self.manifest.transaction() as db:
            now = time.time()
            rows = db.execute("SELECT seq, version FROM alias_history WHERE kb=? ORDER BY seq DESC LIMIT 2",
                              (kb_name,)).fetchall()
            if len(rows) < 2:
                raise InvalidInputError(f"{kb_name!r} has no earlier live version to roll back to; `mmrag versions {kb_name}` "
                                        "lists its versions")
            (seq, current), (_, back) = rows
            db.execute("DELETE FROM alias_history WHERE kb=? AND seq=?", (kb_name, seq))
            db.execute("INSERT INTO events VALUES (?,?,?,?)",
                       (kb_name, now, "rollback", json.dumps({"from": current, "to": back, **(detail or {})}, default=str)))
        return int(current), self.get(kb_name, int(back))

    def forget(self, kb_name: str, number: int) -> None:
        """Remove a version's rows (its collections are dropped by the caller first, under :meth:`lock`).

        Its rows leave the alias history too; where that leaves one version twice in a row, the
        repeat goes, so a rollback always moves to another version.

        Raises:
            InvalidInputError: the version is live (the caller read the alias outside the lock).
        """
        with self.lock(kb_name), self.manifest.transaction() as db:
            live = db.execute("SELECT version FROM alias_history WHERE kb=? ORDER BY seq DESC LIMIT 1",
                              (kb_name,)).fetchone()
            if live is not None and int(live[0]) == number:
                raise InvalidInputError(f"{kb_name}@{number} is live and cannot be pruned; promote or roll back first")
            db.execute("DELETE FROM versions WHERE kb=? AND version=?", (kb_name, number))
            db.execute("DELETE FROM alias_history WHERE kb=? AND version=?", (kb_name, number))
            last = None
            for seq, version in db.execute("SELECT seq, version FROM alias_history WHERE kb=? ORDER BY seq",
                                           (kb_name,)).fetchall():
                if version == last:
                    db.execute("DELETE FROM alias_history WHERE kb=? AND seq=?", (kb_name, seq))
                last = version
            db.execute("INSERT INTO events VALUES (?,?,?,?)", (kb_name, time.time(), "prune",
                                                              json.dumps({"version": number})))

    @staticmethod
    def remove_kb(db: sqlite3.Connection, kb_name: str) -> None:
        """Forget every version, alias switch and event of ``kb_name``, in the caller's transaction (a drop)."""
        for table in ("versions", "alias_history", "events"):
            db.execute(f"DELETE FROM {table} WHERE kb=?", (kb_name,))

    def log(self, kb_name: str, kind: str, detail: dict[str, Any]) -> None:
        """Append an audit event (a forced promote, a refused canary)."""
        self.manifest.write("INSERT INTO events VALUES (?,?,?,?)",
                            [(kb_name, time.time(), kind, json.dumps(detail, default=str))])

    @staticmethod
    def _version(row: tuple[object, ...], live: int | None) -> Version:
        kb, number, physical, state, created, settings, figures = row
        return Version(str(kb), int(number), str(physical), str(state), float(created),  # type: ignore[call-overload]
                       json.loads(str(settings)), json.loads(str(figures)),
                       live=(live if live is not None else 1) == int(number))  # type: ignore[call-overload]
