"""The ingestion service: files -> documents -> chunks -> embeddings -> three indexes.

The :class:`Indexer` is the driver: it alone reads and writes the manifest and the stores. It plans
each file's work from the manifest (:class:`~mmrag.indexing.steps.FileTask`), hands the plans to an engine
that loads, chunks and embeds them (:class:`LocalEngine` in this process, or
:class:`mmrag.indexing.ray.RayEngine` on Ray Data), and writes what comes back through one protocol.

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
Chroma server, until the batches in flight are done, at most about :data:`~mmrag.indexing.writer.LOCK_SLICE` seconds past
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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from mmrag.chunking import SentenceChunker
from mmrag.errors import StoreError, disk_full_hint
from mmrag.indexing import repair
from mmrag.indexing.engines import Engine, LocalEngine
from mmrag.indexing.steps import FileResult, FileTask, Prepared
from mmrag.indexing.summary import IngestSummary, Problem, RunState
from mmrag.indexing.writer import Writer
from mmrag.kb import KnowledgeBase
from mmrag.loaders import DiscoveryProblem, FileRef, JsonlFields, LoaderLimits
from mmrag.manifest import DocState
from mmrag.redaction import Redactor, bind_policy
from mmrag.sources import ObjectRef, discover_sources, is_url, source_exists, source_root
from mmrag.security.rules import AccessRules, LabelTable
from mmrag.tracing import span

if TYPE_CHECKING:
    from mmrag.config import Settings

log = logging.getLogger(__name__)
#: Batches a driver keeps in flight to a Chroma server (the embedded store takes them one by one).
WRITE_CONCURRENCY = 4


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
        run = RunState()
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
        writer = Writer(self, summary, run)
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
    def _plan(self, ref: FileRef, run: RunState, summary: IngestSummary) -> FileTask | None:
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

    def _unchanged(self, ref: FileRef, state: DocState, run: RunState, summary: IngestSummary) -> None:
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

    def _apply_file(self, result: FileResult, run: RunState, summary: IngestSummary) -> None:
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

    def _accept(self, doc: Prepared, run: RunState, summary: IngestSummary) -> bool:
        """Whether a prepared document may be written (a JSONL record's id is claimed here)."""
        if doc.doc_type != "jsonl" or self._claim(doc.doc_id, doc.source, run, summary):
            return True
        run.unsure.add(doc.source)
        return False

    def _claim(self, doc_id: str, source: str, run: RunState, summary: IngestSummary) -> bool:
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

    def _prune(self, roots: Sequence[str | Path], run: RunState) -> int:
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

