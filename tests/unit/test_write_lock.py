"""KnowledgeBase.write_lock: re-entrant in its thread, exclusive across threads (and processes: flock)."""

from __future__ import annotations

import threading
import time


def test_write_lock_is_reentrant_and_exclusive(hashing_kb) -> None:  # type: ignore[no-untyped-def]
    order: list[str] = []
    with hashing_kb.write_lock():
        with hashing_kb.write_lock():  # an ingest with --prune takes it again: must not deadlock
            order.append("nested")

        def other() -> None:
            with hashing_kb.write_lock():
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        order.append("outer done")
    t.join(timeout=10)
    assert order == ["nested", "outer done", "other"]
