"""The ingest writer: prepared documents into the stores and the manifest, in crash-safe batches.

The driver (:class:`~mmrag.indexing.driver.Indexer`) hands each prepared document to a
:class:`Writer`; the protocol it follows (pending -> records -> keyword rows -> done) is described
in :mod:`mmrag.indexing.driver`. :func:`retry_store` retries a transient store error with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mmrag.errors import StoreError
from mmrag.indexing.steps import Prepared
from mmrag.indexing.summary import IngestSummary, Problem, RunState
from mmrag.manifest import DocState
from mmrag.security.rules import LabelTable, apply_labels
from mmrag.tracing import span
from mmrag.types import Record

if TYPE_CHECKING:
    from mmrag.indexing.driver import Indexer

log = logging.getLogger(__name__)
#: Retries of a store request that failed transiently (connection refused or reset, a timeout, a
#: 5xx or 429): 0.5 s, then doubling to 8 s, about 30 s in all before the run fails.
STORE_RETRIES = 6
#: On a Chroma server, batches stay in flight (and the writer lock held) across flushes for at most
#: about this many seconds; then the writer drains them and lets another writer in.
LOCK_SLICE = 1.0
#: Records written to one collection together (several embedding batches): a batch closes when it
#: holds this many joint-space records (its text-model records are as many or fewer). Chroma's cost
#: per ``add`` has a large fixed part: on 2 cores, 256-record adds ran at 0.55x the rate of 1,024-record
#: ones, and 512-record adds cost a 10k build 2.3 s of 22 s in Chroma; each batch also pays one
#: keyword-index commit. Large enough to amortise both, small enough that one slice holds the writer
#: lock about a second.
WRITE_ITEMS = 1024
#: On the embedded store a batch holds up to this many write slices: each batch also pays a keyword
#: commit (with its merges) and two manifest writes, 0.05 s a batch that cost a 10k bulk build
#: 0.6 s. The slices are still written one at a time, the writer lock given back between them.
BATCH_SLICES = 4


class Writer:
    """Writes prepared documents in batches through the protocol, holding the writer lock only to write.

    Per batch: 1) mark pending, 2) drop old records and write the new ones to Chroma, 3) commit
    the keyword rows, 4) mark done. Step 2 of up to ``write_concurrency`` batches runs in threads
    against a Chroma server; steps 3 and 4 run here, in submission order. Step 2 retries a
    transient store error (``StoreError.transient``) with backoff.

    The writer lock is taken at step 1 and given back once no batch is in flight: after each
    batch on the embedded store; on a server, once batches have been in flight for
    :data:`LOCK_SLICE` seconds (they are then drained). A batch in flight is pending in the
    manifest, which another writer's repair must not see, hence the lock until it is done.
    """

    def __init__(self, indexer: Indexer, summary: IngestSummary, run: RunState) -> None:
        self.indexer = indexer
        self.kb = indexer.kb
        self.summary = summary
        self.run = run
        self.batch: list[Prepared] = []
        self.records = 0  # joint-space records in the batch
        concurrency = indexer.write_concurrency if self.kb.store_url else 1
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mmrag-write") if concurrency > 1 else None
        self.limit = concurrency
        # Batches in flight on a server each hold one slice; the embedded store writes them in turn.
        self.batch_records = WRITE_ITEMS if self.pool is not None else WRITE_ITEMS * BATCH_SLICES
        self.inflight: deque[tuple[list[Prepared], list[Record], Future[None] | None]] = deque()
        self._retries = 0
        self._lock = threading.Lock()
        self._held: contextlib.ExitStack | None = None
        self._held_since = 0.0

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """The writer lock for a block (re-entrant: a no-op where the writer already holds it)."""
        with self.indexer.locked():
            yield

    def _hold(self) -> None:
        if self._held is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.indexer.locked())
            self._held, self._held_since = stack, time.monotonic()

    def _release(self) -> None:
        """Give the writer lock back (only ever with nothing in flight)."""
        if self._held is not None:
            held, self._held = self._held, None
            held.close()

    def _current(self, docs: list[Prepared]) -> list[Prepared]:
        """The documents whose file is still the one that was read; the others get a warning."""
        kept = []
        for d in docs:
            try:
                st = os.stat(d.source) if d.stamp is not None else None
            except OSError:
                st = None
            if d.stamp is not None and (st is None or (st.st_size, st.st_mtime_ns) != d.stamp):
                # Another run (a re-upload of the same name) writes the version it read, which is newer.
                self.summary.warnings.append(f"{d.source}: changed while it was being indexed; this run's copy "
                                             "was not written (the run that read the new version writes it)")
                self.run.unsure.add(d.source)
                continue
            kept.append(d)
        return kept

    def add(self, doc: Prepared) -> None:
        self.batch.append(doc)
        self.records += len(doc.clip_ids)
        if self.records >= self.batch_records:
            self.flush()

    def flush(self) -> None:
        kb, col, summary = self.kb, self.kb.collection, self.summary
        docs, self.batch, self.records = self.batch, [], 0
        if not docs and not self.run.stamps:
            return
        self._hold()
        if self.run.stamps:
            kb.manifest.set_file_stamps(col, self.run.stamps)
            self.run.stamps.clear()
        docs = self._current(docs)
        if not docs:
            if not self.inflight:
                self._release()
            return
        # Labels go on the records before any is written, so no record is ever readable unlabelled.
        apply_labels(self.indexer.access, LabelTable(kb.manifest), col, docs)
        for d in docs:
            summary.clip_embeddings += d.clip_computed
            summary.text_embeddings += d.text_computed
            summary.warnings.extend(d.warnings)
            for key, value in d.stats.items():
                summary.stats[key] = summary.stats.get(key, 0.0) + value
        clip_records = [r for d in docs for r in d.clip_records()]
        text_records = [r for d in docs for r in d.text_records()]
        # Open the identity-checked collections before touching anything, so a mismatched
        # collection is refused before any record is deleted (delete_records then uses them).
        clip_store, text_store = kb.clip_store, kb.text_store
        kb.manifest.set_states(col, [DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "pending", "", 0, 0) for d in docs])
        ids = [d.doc_id for d in docs]

        def chroma() -> None:
            started = time.monotonic()
            with span("ingest.write", collection=col, documents=len(ids), clip=len(clip_records), text=len(text_records)):
                self._retrying("delete", lambda _: kb.delete_records(ids))
                self._retrying("write", lambda n: clip_store.upsert(clip_records, fresh=n == 0))
                self._retrying("write", lambda n: text_store.upsert(text_records, fresh=n == 0))
            self._add_time("chroma", time.monotonic() - started)

        if self.pool is None:
            self._write_in_slices(ids, (clip_store, clip_records), (text_store, text_records))
            self._finish(docs, text_records)
            self._release()
            return
        while len(self.inflight) >= self.limit:
            self._complete_oldest()
        self.inflight.append((docs, text_records, self.pool.submit(chroma)))
        if time.monotonic() - self._held_since >= LOCK_SLICE:
            while self.inflight:
                self._complete_oldest()
            self._release()

    def _write_in_slices(self, ids: list[str], *writes: tuple[Any, list[Record]]) -> None:
        """Write a batch to the embedded store :data:`WRITE_ITEMS` records at a time, letting other
        writers in between slices: one long document is one batch, and its thousands of records
        took seconds to write. Its documents stay ``pending`` meanwhile, which another writer's
        repair leaves alone (and a crash leaves for the next run's repair, as ever)."""
        col = self.kb.collection
        with span("ingest.write", collection=col, documents=len(ids), clip=len(writes[0][1]), text=len(writes[1][1])):
            started = time.monotonic()
            self._retrying("delete", lambda _: self.kb.delete_records(ids))
            first = True
            for store, records in writes:
                for lo in range(0, len(records), WRITE_ITEMS):
                    if not first:
                        self._add_time("chroma", time.monotonic() - started)
                        self._release()
                        self._hold()
                        started = time.monotonic()
                    first = False
                    part = records[lo:lo + WRITE_ITEMS]
                    self._retrying("write", lambda n: store.upsert(part, fresh=n == 0))  # noqa: B023 - called here
            self._add_time("chroma", time.monotonic() - started)

    def close(self) -> None:
        self.flush()
        while self.inflight:
            self._complete_oldest()
        if self.run.stamps:
            with self.holding():
                self.kb.manifest.set_file_stamps(self.kb.collection, self.run.stamps)
            self.run.stamps.clear()
        self._release()
        self.summary.retries = self._retries

    def abandon(self) -> None:
        """Wait for the Chroma writes in flight (their batches stay pending for the next run's repair), then let go."""
        self.summary.retries = self._retries
        try:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None
        finally:
            self._release()

    def _complete_oldest(self) -> None:
        docs, text_records, future = self.inflight.popleft()
        if future is not None:
            future.result()  # a store error surfaces here, before this batch is marked done
        self._finish(docs, text_records)

    def _add_time(self, what: str, seconds: float) -> None:
        with self._lock:
            self.summary.timings[what] = self.summary.timings.get(what, 0.0) + seconds

    def _finish(self, docs: list[Prepared], text_records: list[Record]) -> None:
        kb, col, summary = self.kb, self.kb.collection, self.summary
        started = time.monotonic()
        with span("ingest.keyword", collection=col, documents=len(docs), rows=len(text_records)):
            kb.keyword.write(delete_docs=[d.doc_id for d in docs], records=text_records)
        final = []
        for d in docs:
            n_clip, n_text = len(d.clip_ids), len(d.text_ids)
            if d.failure is not None:
                final.append(DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "failed", d.failure, 0, 0))
                summary.failed.append(Problem(d.source, d.failure, "failed"))
            elif n_clip == 0:
                reason = "nothing to index: no text and no readable images"
                final.append(DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "skipped", reason, 0, 0))
                summary.skipped.append(Problem(d.source, reason, "skipped"))
            else:
                final.append(DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "done", "", n_clip, n_text))
                summary.indexed += 1
        kb.manifest.set_states(col, final)
        self._add_time("keyword", time.monotonic() - started)

    def _retrying(self, action: str, call: Callable[[int], None]) -> None:
        def counted() -> None:
            with self._lock:
                self._retries += 1

        retry_store(action, call, on_retry=counted)


def retry_store(action: str, call: Callable[[int], None], *, on_retry: Callable[[], None] = lambda: None,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """Run ``call(attempt)``, retrying a transient :class:`StoreError` with exponential backoff (tenacity).

    Waits 0.5, 1, 2, 4, 8, 8 s: up to :data:`STORE_RETRIES` retries, about 24 s in all, enough
    for a Chroma server to restart. Any other error, and the last transient one, is raised as is.

    Args:
        action: what is retried, for the log ("write", "delete").
        call: the write; it gets the attempt number from 0 (a retried upsert may skip its fresh-id check).
        on_retry: called before each retry (the driver counts them).
        sleep: how to wait (tests pass a recorder).
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    def before_sleep(state: Any) -> None:
        on_retry()
        log.warning("Store %s failed (%s); retry %d of %d in %.1f s", action, state.outcome.exception(),
                    state.attempt_number, STORE_RETRIES, state.next_action.sleep)

    for attempt in Retrying(retry=retry_if_exception(lambda exc: isinstance(exc, StoreError) and exc.transient),
                            stop=stop_after_attempt(STORE_RETRIES + 1), wait=wait_exponential(multiplier=0.5, max=8.0),
                            before_sleep=before_sleep, sleep=sleep, reraise=True):
        with attempt:
            call(attempt.retry_state.attempt_number - 1)
