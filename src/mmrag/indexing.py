"""The ingestion service: files -> documents -> chunks -> embeddings -> three indexes.

The :class:`Indexer` is the driver: it alone reads and writes the manifest and the stores. It plans
each file's work from the manifest (:class:`~mmrag.pipeline.FileTask`), hands the plans to an engine
that loads, chunks and embeds them (:class:`LocalEngine` in this process, or
:class:`mmrag.rayingest.RayEngine` on Ray Data), and writes what comes back through one protocol.

Crash safety (see :mod:`mmrag.manifest`): a document's records are written only while its
manifest row is ``pending``; record ids are deterministic (``doc_id#t<n>`` for chunks,
``doc_id#i<n>`` for images); a redo deletes a document's records before writing them again. So a
run killed at any moment and rerun ends exactly as an uninterrupted run would, whichever engine
either run used. The keyword index follows the same protocol: a batch's keyword rows are committed
after its Chroma records and before its manifest rows say ``done``, so keyword search sees every
``done`` document during a run. On a Chroma server, up to ``write_concurrency`` batches are in
flight at once (each still pending -> records -> keyword rows -> done, in order), and transient
server errors are retried with backoff.

Cost: a write of k documents does O(k) work in every index. Nothing re-reads the collection,
except a repair that found the stores and the manifest disagree in their totals (a crash, a
damaged store), and then only the documents involved (plus a scan for orphans when a store holds
records no manifest row accounts for).

The writer lock (:meth:`~mmrag.kb.KnowledgeBase.write_lock`) is held only while the stores and
the manifest change: for the repair and the plan at the start, for each batch's write (or, on a
Chroma server, until the batches in flight are done, at most about :data:`LOCK_SLICE` seconds past
a batch), for a file's failure row, and for the prune at the end. Loading, OCR and embedding run
without it, so a small upload to the same collection waits for one batch's write, not for a
long document's minutes of work. A document whose file changed after it was read is not written
(the run that read the new version writes that one). Each document also has budgets (pages,
images, OCR and load seconds: :class:`~mmrag.loaders.LoaderLimits`, set by
:func:`ingest_limits`); one over budget fails with a failure row naming the budget.

What is never lost: a source that exists but fails to load (a corrupt PDF, an unreadable file, a
JSONL with bad lines) keeps its previously indexed records, and ``prune`` removes only documents
whose source is gone (or a JSONL record no longer in a file that loaded without problems). A doc
id already held by another existing source is refused, not overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

from mmrag import repair
from mmrag.chunking import SentenceChunker
from mmrag.errors import StoreError, disk_full_hint
from mmrag.kb import KnowledgeBase
from mmrag.loaders import DiscoveryProblem, FileRef, JsonlFields, LoaderLimits
from mmrag.manifest import DocState
from mmrag.pipeline import FileResult, FileTask, LoadedDoc, Prepared, embed_documents, load_file
from mmrag.redaction import Redactor, bind_policy, counts_of
from mmrag.sources import ObjectRef, discover_sources, is_url, source_exists, source_root
from mmrag.security.rules import AccessRules, LabelTable, apply_labels
from mmrag.tracing import span
from mmrag.types import Record

if TYPE_CHECKING:
    from mmrag.config import Settings

log = logging.getLogger(__name__)
#: Items (chunks + images) embedded together.
FLUSH_ITEMS = 256
#: Records written to a store together (several embedding batches). Chroma's cost per ``add`` has a
#: large fixed part: on 2 cores, 256-record adds ran at 0.55x the rate of 1,024-record ones, and each
#: batch also pays one keyword-index commit. Large enough to amortise both, small enough that one
#: slice holds the writer lock well under a second.
WRITE_ITEMS = 1024
#: Batches a driver keeps in flight to a Chroma server (the embedded store takes them one by one).
WRITE_CONCURRENCY = 4
#: Retries of a store request that failed transiently (connection refused or reset, a timeout, a
#: 5xx or 429): 0.5 s, then doubling to 8 s, about 30 s in all before the run fails.
STORE_RETRIES = 6
#: On a Chroma server, batches stay in flight (and the writer lock held) across flushes for at most
#: about this many seconds; then the writer drains them and lets another writer in.
LOCK_SLICE = 1.0


def ingest_limits(settings: "Settings", **overrides: Any) -> LoaderLimits:
    """The loaders' limits and per-document budgets from the settings (for the CLI and the server).

    Args:
        settings: ``max_file_mb`` and the ``ingest`` section (``MMRAG_INGEST__MAX_PAGES`` ...) apply.
        overrides: fields of :class:`LoaderLimits` to set instead (the CLI's ``--ocr``, ...).

    Example:
        >>> from mmrag.config import Settings
        >>> ingest_limits(Settings(ingest={"max_pages": 50})).max_pages
        50
    """
    budget = settings.ingest
    values: dict[str, Any] = {
        "max_file_bytes": settings.max_file_mb * 1024 * 1024, "max_image_aspect": budget.max_image_aspect,
        "max_pages": budget.max_pages, "max_images": budget.max_images,
        "max_ocr_seconds": budget.max_ocr_seconds, "max_seconds": budget.max_seconds,
    }
    values.update(overrides)
    return LoaderLimits(**values)


@dataclass
class Problem:
    """A file that was not indexed, and why."""

    path: str
    reason: str
    status: str  # failed | skipped


@dataclass
class IngestSummary:
    """What a run did. ``failed`` non-empty means a partial failure (exit status 3 in the CLI)."""

    collection: str
    files_seen: int = 0
    indexed: int = 0
    unchanged: int = 0
    pruned: int = 0
    repaired: int = 0
    clip_embeddings: int = 0
    text_embeddings: int = 0
    failed: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The loaders' counters (``Document.stats``) summed over the documents indexed, e.g. OCR pages.
    stats: dict[str, float] = field(default_factory=dict)
    #: Store requests retried after a transient failure.
    retries: int = 0
    engine: str = "local"
    #: The engine's workers: ``embed`` actors, and the ``cpus``/``gpus`` it ran on.
    workers: dict[str, float] = field(default_factory=dict)
    #: Seconds the engine took to start (Ray's start-up), included in ``seconds``.
    startup_seconds: float = 0.0
    #: Seconds spent writing: ``chroma`` (deletes and writes, summed over concurrent batches) and
    #: ``keyword`` (tantivy commits and manifest rows), so a run shows whether it waited on the stores.
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: The collection's redaction policy (:mod:`mmrag.redaction`); empty: nothing is scrubbed.
    redact: tuple[str, ...] = ()

    @property
    def redactions(self) -> dict[str, int]:
        """Values replaced in the documents indexed by this run, by kind (every kind of the policy)."""
        return {**{k: 0 for k in self.redact}, **counts_of(self.stats)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "collection": self.collection, "files_seen": self.files_seen, "indexed": self.indexed,
            "unchanged": self.unchanged, "pruned": self.pruned, "repaired": self.repaired,
            "embeddings": {"clip": self.clip_embeddings, "text": self.text_embeddings},
            "failed": [p.__dict__ for p in self.failed], "skipped": [p.__dict__ for p in self.skipped],
            "warnings": self.warnings, "stats": {k: round(v, 3) for k, v in self.stats.items()},
            "retries": self.retries, "engine": self.engine, "workers": self.workers,
            "startup_seconds": round(self.startup_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()}, "seconds": round(self.seconds, 3),
            "redact": list(self.redact), "redactions": self.redactions,
        }


@dataclass
class _Run:
    """What one ingest run has seen, for id collisions and for a prune that deletes only what is gone."""

    seen: dict[str, str] = field(default_factory=dict)  # doc id -> the source that claimed it
    unsure: set[str] = field(default_factory=set)  # sources that exist but did not load completely
    stamps: list[tuple[str, int, int, str]] = field(default_factory=list)  # file stamps to record


class Engine(Protocol):
    """Runs the planned files' work and yields, in any order, their documents and their ends.

    An engine never touches the manifest or a store; the :class:`Indexer` applies what it yields.
    """

    name: str

    def run(self, tasks: Sequence[FileTask], indexer: "Indexer") -> Iterator[FileResult | Prepared]: ...

    def describe(self) -> dict[str, float]:
        """Worker counts for the summary."""
        ...

    @property
    def startup_seconds(self) -> float: ...


class LocalEngine:
    """Loads, chunks and embeds in this process, one file after another (the default)."""

    name = "local"
    startup_seconds = 0.0

    def describe(self) -> dict[str, float]:
        return {"embed": 1, "cpus": float(os.cpu_count() or 1)}

    def run(self, tasks: Sequence[FileTask], indexer: "Indexer") -> Iterator[FileResult | Prepared]:
        buffer: list[LoadedDoc] = []
        items = 0
        for task in tasks:
            for item in load_file(task, indexer.chunker, jsonl=indexer.jsonl, limits=indexer.limits,
                                  redactor=indexer.redactor):
                if isinstance(item, LoadedDoc):
                    buffer.append(item)
                    items += item.items
                    if items >= FLUSH_ITEMS:
                        yield from _embed(buffer, indexer)
                        buffer, items = [], 0
                else:
                    yield item
        yield from _embed(buffer, indexer)


def _embed(buffer: list[LoadedDoc], indexer: "Indexer") -> list[Prepared]:
    with span("ingest.embed", collection=indexer.kb.collection, documents=len(buffer),
              items=sum(d.items for d in buffer)):
        return embed_documents(buffer, indexer.kb)


class Indexer:
    """Ingests files into a :class:`KnowledgeBase`.

    Args:
        kb: the knowledge base to write.
        jsonl: which JSONL fields hold the id, title and text.
        limits: the loaders' limits and OCR settings.
        engine: where loading and embedding run (default: :class:`LocalEngine`).
        write_concurrency: batches in flight to a Chroma server at once.
        guard: called each time the writer lock is taken, before anything is written under it; it
            may raise to stop the run (a promote moved the alias: see
            :func:`mmrag.lifecycle.promotion.ingest_on_live_version`).
        redact: the redaction policy this write asks for (``["email", "card"]``; ``[]`` for none);
            None applies the collection's own. A new collection records it; one built with
            another policy refuses the write (:func:`mmrag.redaction.bind_policy`).
        access: the access labels this run gives its documents (:mod:`mmrag.security.rules`);
            default: only a JSONL ``access`` field, and the labels documents already had.
    """

    def __init__(self, kb: KnowledgeBase, *, jsonl: JsonlFields = JsonlFields(),
                 limits: LoaderLimits = LoaderLimits(), engine: Engine | None = None,
                 write_concurrency: int = WRITE_CONCURRENCY, guard: Callable[[], None] | None = None,
                 redact: Sequence[str] | None = None, access: AccessRules | None = None) -> None:
        self.kb = kb
        self.redact = redact
        #: The collection's redactor, bound when a run takes the writer lock (:meth:`ingest`).
        self.redactor = Redactor(())
        self.access = access or AccessRules()
        #: Called each time this indexer takes the writer lock, before it writes anything under it
        #: (:func:`mmrag.lifecycle.promotion.ingest_on_live_version` checks the alias there).
        self.guard = guard
        self.jsonl = jsonl
        self.limits = limits
        self.engine: Engine = engine or LocalEngine()
        self.write_concurrency = max(1, write_concurrency)
        self.chunker = SentenceChunker(kb.chunk_spec)

    # -- public -------------------------------------------------------------------------------
    def ingest(self, paths: Sequence[str | Path], *, prune: bool = False,
               progress: Callable[[int, int], None] | None = None,
               files: Sequence[FileRef | ObjectRef | DiscoveryProblem] | None = None) -> IngestSummary:
        """Index every supported file under ``paths``; skip unchanged ones; redo interrupted ones.

        Args:
            paths: files, folders or object URLs (``s3://bucket/prefix``: see :mod:`mmrag.sources`). A
                folder's files get doc ids relative to it, a prefix's objects relative to it.
            prune: also remove documents whose file (or JSONL record) is gone.
            progress: called with (files done, files total).
            files: instead of walking ``paths``, exactly these files (or objects) with these doc ids (a
                reindex copies another version's documents; see :mod:`mmrag.lifecycle.reindex`).

        Returns:
            The run's summary. Bad files are listed in it; they never stop the run.
        """
        with span("ingest", collection=self.kb.collection, engine=self.engine.name) as trace:
            try:
                summary = self._ingest(paths, prune, progress, files)
                # The version's drift reference, once (a primary-key read after that; never raises).
                from mmrag.lifecycle.drift import ensure_reference

                with self.kb.write_lock():
                    ensure_reference(self.kb)
                trace.set_attributes(files=summary.files_seen, indexed=summary.indexed, unchanged=summary.unchanged,
                                     failed=len(summary.failed), retries=summary.retries)
                return summary
            except StoreError as exc:
                hint = disk_full_hint(self.kb.data_dir)
                if hint and hint not in str(exc):
                    raise type(exc)(f"{exc}{hint}") from exc
                raise

    def _ingest(self, paths: Sequence[str | Path], prune: bool,
                progress: Callable[[int, int], None] | None, files: Sequence[FileRef] | None = None) -> IngestSummary:
        started = time.monotonic()
        summary = IngestSummary(collection=self.kb.collection, engine=self.engine.name)
        found = list(discover_sources(paths)) if files is None else list(files)
        refs = [r for r in found if isinstance(r, (FileRef, ObjectRef))]
        run = _Run()
        for problem in (r for r in found if isinstance(r, DiscoveryProblem)):
            status = "skipped" if problem.reason.startswith("unsupported") else "failed"
            (summary.skipped if status == "skipped" else summary.failed).append(Problem(problem.path, problem.reason, status))
            run.unsure.add(problem.path)
        summary.files_seen = len(refs)
        with self.locked():
            self.kb.check_writable()  # a shared server's collection of another data dir: refuse up front
            # Under the lock, before any write: the first write records the policy, and a write asking
            # for another one is refused before a document of either policy lands.
            self.redactor = Redactor(bind_policy(self.kb.manifest, self.kb.collection, self.redact))
            summary.redact = self.redactor.policy
            # Repair and reindex read sources only under these (mmrag.lifecycle.roots). The CLI passes
            # the paths it walked beside ``files``; repair and reindex pass no paths.
            if paths:
                self.kb.manifest.add_roots(self.kb.collection, [source_root(p) for p in paths])
            with span("ingest.repair") as trace:
                summary.repaired = repair.before_ingest(self.kb)
                trace.set_attributes(documents=summary.repaired)
            with span("ingest.plan", files=len(refs)) as trace:
                tasks = [t for t in (self._plan(ref, run, summary) for ref in refs) if t is not None]
                trace.set_attributes(planned=len(tasks))
        done = len(refs) - len(tasks)
        if progress:
            progress(done, len(refs))
        writer = _Writer(self, summary, run)
        try:
            if tasks:
                # The engine loads, reads (OCR) and embeds without the writer lock; the writer takes
                # it for each batch's write, and a file's failure row is written under it too.
                for item in self.engine.run(tasks, self):
                    if isinstance(item, FileResult):
                        # Only a failure and a JSONL file's bookkeeping write the manifest here.
                        writes = item.error is not None or item.ref.suffix == ".jsonl"
                        with writer.holding() if writes else contextlib.nullcontext():
                            self._apply_file(item, run, summary)
                        done += 1
                        if progress:
                            progress(done, len(refs))
                    elif self._accept(item, run, summary):
                        writer.add(item)
            writer.close()
        finally:
            writer.abandon()  # after an error: wait for the batches in flight, write nothing more
        summary.startup_seconds = self.engine.startup_seconds
        summary.workers = self.engine.describe() if tasks else {}
        if prune:
            with self.locked(), span("ingest.prune") as trace:
                summary.pruned = self._prune(paths, run)
                trace.set_attributes(documents=summary.pruned)
        summary.seconds = time.monotonic() - started
        return summary

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The writer lock, with :attr:`guard` run once it is held (the lock is re-entrant)."""
        with self.kb.write_lock():
            if self.guard is not None:
                self.guard()
            yield

    def delete(self, doc_ids: Iterable[str]) -> int:
        """Remove documents from all three indexes and the manifest. Returns how many existed."""
        with self.kb.write_lock():
            return self._delete(list(doc_ids))

    def _delete(self, doc_ids: list[str]) -> int:
        kb, col = self.kb, self.kb.collection
        known = [d for d in doc_ids if kb.manifest.get(col, d) is not None]
        if not known:
            return 0
        kb.check_writable()  # refuse before the manifest forgets anything
        # Manifest first: a crash after it leaves orphan records, which the next run's repair
        # finds (the stores then hold more than the manifest accounts for) and deletes. The other
        # order would leave rows whose records are gone, and a repair would index them again.
        kb.manifest.remove(col, known)
        kb.delete_records(known)
        kb.keyword.delete_docs(known)
        return len(known)

    def rebuild_keyword_index(self) -> int:
        """Rebuild the keyword index from the text collection. Returns the number of chunks indexed.

        Only for a damaged index: writes keep the index current in place.
        """
        with self.kb.write_lock():
            return repair.rebuild_keyword(self.kb)

    # -- planning and applying ------------------------------------------------------------------
    def _plan(self, ref: FileRef, run: _Run, summary: IngestSummary) -> FileTask | None:
        """What the engine must do with ``ref``, or ``None`` when the manifest says nothing (refused, unchanged).

        Like git and rsync, a file whose size and mtime match the recorded stamp is not hashed
        again: a file rewritten with the same size inside the same mtime tick is taken as
        unchanged; ``mmrag reset`` (or touching the file) makes the next run hash it again.
        """
        manifest, col = self.kb.manifest, self.kb.collection
        source = str(ref.path)
        jsonl = ref.suffix == ".jsonl"
        if not jsonl and not self._claim(ref.doc_id, source, run, summary):
            return None
        digest = ""
        stamp = manifest.file_stamp(col, source)
        if stamp is not None:
            if isinstance(ref, ObjectRef):
                current = ref.stamp  # size and ETag, as listed: an unchanged object is not read
            else:
                try:
                    st = os.stat(ref.path)
                except OSError:
                    return FileTask(ref)  # the engine reports it (vanished, unreadable)
                current = (st.st_size, st.st_mtime_ns)
            if stamp[:2] == current:
                digest = stamp[2]
        if jsonl:
            known = {s.doc_id: s.content_hash for s in manifest.under(col, source)
                     if s.source == source and s.status == "done"}
            return FileTask(ref, digest, known=known)
        state = manifest.get(col, ref.doc_id)
        if digest and state is not None and state.content_hash == digest and state.status != "pending":
            self._unchanged(ref, state, run, summary)
            return None
        return FileTask(ref, digest, state.content_hash if state else None, state.status if state else None)

    def _unchanged(self, ref: FileRef, state: DocState, run: _Run, summary: IngestSummary) -> None:
        summary.unchanged += 1
        if state.status in {"failed", "skipped"}:
            run.unsure.add(str(ref.path))
            bucket = summary.failed if state.status == "failed" else summary.skipped
            bucket.append(Problem(str(ref.path), state.reason + " (unchanged since last run)", state.status))
        elif state.status == "done":
            self._relabel_unchanged(ref)

    def _relabel_unchanged(self, ref: FileRef) -> None:
        """Give an unchanged file the labels this run asks for: `ingest --access` over an indexed folder
        must protect it, not skip it (a metadata write; nothing is read or embedded again)."""
        from mmrag.security.relabel import set_labels

        wanted = self.access.labels_for(str(ref.path), {})
        if not wanted:
            return  # no label asked for: the document keeps the ones it has
        kept = LabelTable(self.kb.manifest).get(self.kb.collection, [ref.doc_id]).get(ref.doc_id, ())
        if set(wanted) != set(kept):
            set_labels(self.kb, ref.doc_id, wanted)

    def _apply_file(self, result: FileResult, run: _Run, summary: IngestSummary) -> None:
        """Record the end of one file's work: its stamp, its bad lines, its failure, its unchanged records."""
        ref, source = result.ref, str(result.ref.path)
        if result.stamp is not None:
            run.stamps.append((source, result.stamp[0], result.stamp[1], result.digest))
        if result.unchanged_file:
            state = self.kb.manifest.get(self.kb.collection, ref.doc_id)
            if state is not None:
                self._unchanged(ref, state, run, summary)
            return
        for problem in result.problems:
            # The file's other records still load; its missing ones must not be pruned.
            run.unsure.add(source)
            summary.failed.append(Problem(f"{problem.source}:{problem.line}", problem.reason, "failed"))
        for doc_id in result.seen:
            if self._claim(doc_id, source, run, summary):
                summary.unchanged += 1
            else:
                run.unsure.add(source)
        if result.error is not None:
            run.unsure.add(source)
            status = "skipped" if result.skipped else "failed"
            self._record_problem(ref, result.digest, Problem(source, result.error, status), summary)
        elif ref.suffix == ".jsonl" and result.loaded:
            self._clear_file_failure(ref)

    def _accept(self, doc: Prepared, run: _Run, summary: IngestSummary) -> bool:
        """Whether a prepared document may be written (a JSONL record's id is claimed here)."""
        if doc.doc_type != "jsonl" or self._claim(doc.doc_id, doc.source, run, summary):
            return True
        run.unsure.add(doc.source)
        return False

    def _claim(self, doc_id: str, source: str, run: _Run, summary: IngestSummary) -> bool:
        """Whether ``source`` may write ``doc_id``: no other source of this run or of the manifest holds it."""
        holder = run.seen.get(doc_id)
        if holder is None:
            state = self.kb.manifest.get(self.kb.collection, doc_id)
            if state is not None and state.source != source and source_exists(state.source):
                holder = state.source
            else:
                run.seen[doc_id] = source
                return True
        if holder == source:
            return True
        summary.failed.append(Problem(source, (
            f"doc id {doc_id!r} is already used by {holder}; the indexed one is kept. Doc ids are paths relative to "
            "the ingested folder (or JSONL record ids): give this one another id, ingest the folders' common "
            f"parent instead, or remove the other first (mmrag delete {doc_id})"), "failed"))
        return False

    def _clear_file_failure(self, ref: FileRef) -> None:
        """Forget the failure row a JSONL file got when none of its lines loaded, now that some do."""
        state = self.kb.manifest.get(self.kb.collection, ref.doc_id)
        if (state is not None and state.source == str(ref.path) and state.status in {"failed", "skipped"}
                and not (state.n_clip or state.n_text)):
            self.kb.manifest.remove(self.kb.collection, [ref.doc_id])

    def _record_problem(self, ref: FileRef, digest: str, problem: Problem, summary: IngestSummary) -> None:
        manifest, col = self.kb.manifest, self.kb.collection
        old = manifest.get(col, ref.doc_id)
        if old is not None and old.status == "pending":
            # An interrupted write left partial records: they must not outlive the failure.
            self.kb.delete_records([ref.doc_id])
            self.kb.keyword.delete_docs([ref.doc_id])
        # Whatever version is indexed stays, also when an earlier update failed too: the row keeps
        # its record counts, so a later repair does not take the kept records for damage.
        kept = old is not None and old.status != "pending" and bool(old.n_clip or old.n_text)
        reason = problem.reason + ("; the previously indexed version is kept" if kept else "")
        (summary.failed if problem.status == "failed" else summary.skipped).append(
            Problem(problem.path, reason, problem.status))
        manifest.set_states(col, [DocState(
            ref.doc_id, str(ref.path), ref.suffix.lstrip("."), digest, problem.status, reason,
            old.n_clip if kept and old else 0, old.n_text if kept and old else 0,
        )])

    def _prune(self, roots: Sequence[str | Path], run: _Run) -> int:
        """Remove documents under ``roots`` whose source is gone.

        A document this run did not see is kept when its source still exists and did not load
        completely (a corrupt file, a JSONL with bad lines): only a JSONL record missing from a
        file that loaded without problems, or a document whose file is gone, is removed.
        """
        col = self.kb.collection
        gone: list[str] = []
        for scope in {source_root(p) for p in roots}:  # the loaders' source paths are abspath'd too
            for state in self.kb.manifest.under(col, scope):
                inside = state.source == scope or state.source.startswith(scope.rstrip("/") + "/")
                if not inside or state.doc_id in run.seen or state.source in run.unsure:
                    continue
                if not is_url(state.source) and os.path.exists(state.source) and not state.source.endswith(".jsonl"):
                    continue  # a file that exists but was not discovered (now too big, unsupported): keep
                # An object the listing did not return is gone (one it refused is in run.unsure).
                gone.append(state.doc_id)
        return self._delete(sorted(set(gone))) if gone else 0


class _Writer:
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

    def __init__(self, indexer: Indexer, summary: IngestSummary, run: _Run) -> None:
        self.indexer = indexer
        self.kb = indexer.kb
        self.summary = summary
        self.run = run
        self.batch: list[Prepared] = []
        self.items = 0
        concurrency = indexer.write_concurrency if self.kb.store_url else 1
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mmrag-write") if concurrency > 1 else None
        self.limit = concurrency
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
        self.items += doc.items
        if self.items >= WRITE_ITEMS:
            self.flush()

    def flush(self) -> None:
        kb, col, summary = self.kb, self.kb.collection, self.summary
        docs, self.batch, self.items = self.batch, [], 0
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
        """Write a batch to the embedded store :data:`FLUSH_ITEMS` records at a time, letting other
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
