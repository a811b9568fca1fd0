"""The owner of the manifest's ``drift_refs`` table: each version's drift reference, by modality.

A reference (:class:`mmrag.lifecycle.drift.Reference`) is stored as its JSON text; this class
moves rows and knows nothing of what they mean, so :mod:`mmrag.lifecycle.drift` (which builds and
compares them) and :mod:`mmrag.lifecycle.snapshots` (which copies them) share one home for its SQL.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable, Mapping

from mmrag.manifest import Manifest

#: A row as a snapshot carries it (the collection column left out).
COLUMNS = ("modality", "value", "created_at")


class DriftRefs:
    """The drift references of every physical collection in one manifest.

    Args:
        manifest: the data dir's manifest.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def put(self, physical: str, values: Mapping[str, str]) -> None:
        """Store (replace) ``physical``'s references: modality -> JSON text."""
        now = time.time()
        self.manifest.write("INSERT OR REPLACE INTO drift_refs (collection, modality, value, created_at) "
                            "VALUES (?,?,?,?)", [(physical, m, v, now) for m, v in values.items()])

    def get(self, physical: str) -> dict[str, str]:
        """``physical``'s references: modality -> JSON text (empty when none was built)."""
        rows = self.manifest.read("SELECT modality, value FROM drift_refs WHERE collection=?", (physical,))
        return {str(m): str(v) for m, v in rows}

    def exists(self, physical: str) -> bool:
        """Whether ``physical`` has a reference (one primary-key read)."""
        return bool(self.manifest.read("SELECT 1 FROM drift_refs WHERE collection=? LIMIT 1", (physical,)))

    def rows(self, physical: str) -> list[dict[str, Any]]:
        """Every row of ``physical`` as a dict of :data:`COLUMNS`, by modality (what a snapshot writes)."""
        rows = self.manifest.read("SELECT modality, value, created_at FROM drift_refs WHERE collection=? "
                                  "ORDER BY modality", (physical,))
        return [dict(zip(COLUMNS, r)) for r in rows]

    @staticmethod
    def insert(db: sqlite3.Connection, physical: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Add rows of :data:`COLUMNS` to ``physical`` inside the caller's transaction (a restore)."""
        db.executemany("INSERT INTO drift_refs VALUES (?,?,?,?)", ((physical, *row) for row in rows))
