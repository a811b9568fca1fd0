"""A read that races a delete inside Chroma is read again, not failed (real embedded Chroma).

Chroma updates its vector index and its record store one after the other, so a query that finds an
id in the index just as a concurrent delete removes its record fails with "Error finding id" (the
soak saw a search answer 503 that way). Reads are idempotent: :func:`mmrag.stores.chroma._read`
sends them again. The race itself cannot be timed from a test, so the collection is wrapped to fail
the way Chroma does, a given number of times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmrag.errors import StoreError
from mmrag.stores import chroma
from mmrag.stores.chroma import ChromaStore, open_client
from mmrag.types import Record


class RacingCollection:
    """Delegates to a real collection; the first ``fails`` calls of ``method`` raise as Chroma does."""

    def __init__(self, real: Any, method: str, fails: int, message: str = "Error finding id") -> None:
        self.real, self.method, self.fails, self.message, self.calls = real, method, fails, message, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name != self.method:
            return attr

        def racing(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls <= self.fails:
                from chromadb.errors import InternalError

                raise InternalError(self.message)
            return attr(*args, **kwargs)
        return racing


@pytest.fixture
def store(tmp_path: Path) -> ChromaStore:
    s = ChromaStore(open_client(tmp_path), "race-test", None)
    s.upsert([Record(f"r{i}", [1.0, float(i), 0.5], {"doc_id": f"d{i}"}, f"text {i}") for i in range(5)])
    return s


@pytest.mark.parametrize("method, read", [
    ("query", lambda s: [h.id for h in s.query([1.0, 0.0, 0.5], 2)]),
    ("query", lambda s: [rid for rid, _ in s.nearest([1.0, 0.0, 0.5], 2)]),
    ("get", lambda s: sorted(h.id for h in s.get(["r1", "r2"]))),
])
def test_a_read_that_raced_a_delete_is_read_again(store: ChromaStore, method: str, read: Any) -> None:
    expected = read(store)
    store._col = RacingCollection(store._col, method, fails=chroma.READ_RACE_RETRIES)
    assert read(store) == expected
    assert store._col.calls == chroma.READ_RACE_RETRIES + 1


def test_a_race_that_does_not_pass_and_any_other_error_fail_as_store_errors(store: ChromaStore) -> None:
    store._col = RacingCollection(store._col, "query", fails=chroma.READ_RACE_RETRIES + 1)
    with pytest.raises(StoreError, match="Error finding id"):
        store.query([1.0, 0.0, 0.5], 2)
    store._col = RacingCollection(store._col.real, "query", fails=1, message="disk I/O error")
    with pytest.raises(StoreError, match="disk I/O error"):
        store.query([1.0, 0.0, 0.5], 2)
    assert store._col.calls == 1  # not a race: never sent again
