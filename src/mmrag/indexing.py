"""The ingestion service: files -> documents -> chunks -> embeddings -> three indexes.

Crash safety (see :mod:`mmrag.manifest`): a document's records are written only while its
manifest row is ``pending``; record ids are deterministic (``doc_id#t<n>`` for chunks,
``doc_id#i<n>`` for images); a redo deletes a document's records before writing them again. So a
run killed at any moment and rerun ends exactly as an uninterrupted run would. The keyword index
follows the same protocol: a batch's keyword rows are committed after its Chroma records and
before its manifest rows say ``done``, so keyword search sees every ``done`` document during a run.

Cost: a write of k documents does O(k) work in every index. Nothing re-reads the collection,
except a repair that found the stores and the manifest disagree in their totals (a crash, a
damaged store), and then only the documents involved (plus a scan for orphans when a store holds
records no manifest row accounts for).

What is never lost: a source that exists but fails to load (a corrupt PDF, an unreadable file, a
JSONL with bad lines) keeps its previously indexed records, and ``prune`` removes only documents
whose source is gone (or a JSONL record no longer in a file that loaded without problems). A doc
id already held by another existing source is refused, not overwritten.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from mmrag.chunking import SentenceChunker
from mmrag.errors import LoadError, StoreError, disk_full_hint
from mmrag.kb import KnowledgeBase
from mmrag.loaders import (
    DiscoveryProblem,
    FileRef,
    JsonlFields,
    LoaderLimits,
    RecordProblem,
    discover,
    file_sha256,
    load_iter,
)
from mmrag.manifest import DocState
from mmrag.types import Chunk, Document, ImageAsset, Record

log = logging.getLogger(__name__)
#: Items (chunks + images) embedded together before their documents are written.
FLUSH_ITEMS = 256


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
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "collection": self.collection, "files_seen": self.files_seen, "indexed": self.indexed,
            "unchanged": self.unchanged, "pruned": self.pruned, "repaired": self.repaired,
            "embeddings": {"clip": self.clip_embeddings, "text": self.text_embeddings},
            "failed": [p.__dict__ for p in self.failed], "skipped": [p.__dict__ for p in self.skipped],
            "warnings": self.warnings, "stats": {k: round(v, 3) for k, v in self.stats.items()},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Run:
    """What one ingest run has seen, for id collisions and for a prune that deletes only what is gone."""

    seen: dict[str, str] = field(default_factory=dict)  # doc id -> the source that claimed it
    unsure: set[str] = field(default_factory=set)  # sources that exist but did not load completely
    stamps: list[tuple[str, int, int, str]] = field(default_factory=list)  # file stamps to record


class Indexer:
    """Ingests files into a :class:`KnowledgeBase`."""

    def __init__(self, kb: KnowledgeBase, *, jsonl: JsonlFields = JsonlFields(),
                 limits: LoaderLimits = LoaderLimits()) -> None:
        self.kb = kb
        self.jsonl = jsonl
        self.limits = limits
        self.chunker = SentenceChunker(kb.chunk_spec)

    # -- public -------------------------------------------------------------------------------
    def ingest(self, paths: Sequence[Path], *, prune: bool = False,
               progress: Callable[[int, int], None] | None = None) -> IngestSummary:
        """Index every supported file under ``paths``; skip unchanged ones; redo interrupted ones.

        Args:
            paths: files or folders. A folder's files get doc ids relative to it.
            prune: also remove documents whose file (or JSONL record) is gone.
            progress: called with (files done, files total).

        Returns:
            The run's summary. Bad files are listed in it; they never stop the run.
        """
        with self.kb.write_lock():
            try:
                return self._ingest(paths, prune, progress)
            except StoreError as exc:
                hint = disk_full_hint(self.kb.data_dir)
                if hint and hint not in str(exc):
                    raise type(exc)(f"{exc}{hint}") from exc
                raise

    def _ingest(self, paths: Sequence[Path], prune: bool,
                progress: Callable[[int, int], None] | None) -> IngestSummary:
        started = time.monotonic()
        summary = IngestSummary(collection=self.kb.collection)
        self.kb.check_writable()  # a shared server's collection of another data dir: refuse up front
        summary.repaired = self._repair()
        found = list(discover([Path(p) for p in paths]))
        refs = [r for r in found if isinstance(r, FileRef)]
        run = _Run()
        for problem in (r for r in found if isinstance(r, DiscoveryProblem)):
            status = "skipped" if problem.reason.startswith("unsupported") else "failed"
            (summary.skipped if status == "skipped" else summary.failed).append(Problem(problem.path, problem.reason, status))
            run.unsure.add(problem.path)
        summary.files_seen = len(refs)
        batch: list[Document] = []
        items = 0
        for n, ref in enumerate(refs, 1):
            for doc in self._changed_documents(ref, run, summary):
                batch.append(doc)
                items += sum(len(b.text) // 800 + 1 for b in doc.texts) + len(doc.images)
                if items >= FLUSH_ITEMS:
                    self._flush(batch, summary, run)
                    batch, items = [], 0
            if progress:
                progress(n, len(refs))
        self._flush(batch, summary, run)
        if prune:
            summary.pruned = self._prune([Path(p) for p in paths], run)
        summary.seconds = time.monotonic() - started
        return summary

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
            return self.kb.rebuild_keyword_index()

    # -- steps --------------------------------------------------------------------------------
    def _digest(self, ref: FileRef, run: _Run) -> str:
        """The file's sha256, re-hashed only when its size or mtime changed since it was last hashed.

        Like git and rsync, a file rewritten with the same size inside the same mtime tick is taken
        as unchanged; ``mmrag reset`` (or touching the file) makes the next run hash it again.
        """
        source = str(ref.path)
        try:
            st = os.stat(ref.path)
        except OSError as exc:
            raise LoadError(source, f"cannot read file: {exc.strerror or exc}") from exc
        stamp = self.kb.manifest.file_stamp(self.kb.collection, source)
        if stamp is not None and stamp[:2] == (st.st_size, st.st_mtime_ns):
            return stamp[2]
        digest = file_sha256(ref.path)
        run.stamps.append((source, st.st_size, st.st_mtime_ns, digest))
        return digest

    def _claim(self, doc_id: str, source: str, run: _Run, summary: IngestSummary) -> bool:
        """Whether ``source`` may write ``doc_id``: no other source of this run or of the manifest holds it."""
        holder = run.seen.get(doc_id)
        if holder is None:
            state = self.kb.manifest.get(self.kb.collection, doc_id)
            if state is not None and state.source != source and os.path.exists(state.source):
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

    def _changed_documents(self, ref: FileRef, run: _Run, summary: IngestSummary) -> Iterator[Document]:
        """Yield the documents of ``ref`` that are new or changed; record failures in the manifest and the summary."""
        manifest, col = self.kb.manifest, self.kb.collection
        source = str(ref.path)
        jsonl = ref.suffix == ".jsonl"
        if not jsonl and not self._claim(ref.doc_id, source, run, summary):
            return
        try:
            digest = self._digest(ref, run)
        except LoadError as exc:  # _digest translates OSError (vanished, unreadable) itself
            run.unsure.add(source)
            self._record_problem(ref, "", Problem(source, exc.reason, "failed"), summary)
            return
        if not jsonl:
            state = manifest.get(col, ref.doc_id)
            if state and state.content_hash == digest and state.status != "pending":
                summary.unchanged += 1
                if state.status in {"failed", "skipped"}:
                    run.unsure.add(source)
                    bucket = summary.failed if state.status == "failed" else summary.skipped
                    bucket.append(Problem(source, state.reason + " (unchanged since last run)", state.status))
                return
        loaded = 0
        try:
            for item in load_iter(ref, content_hash=digest, jsonl=self.jsonl, limits=self.limits):
                if isinstance(item, RecordProblem):
                    # The file's other records still load; its missing ones must not be pruned.
                    run.unsure.add(source)
                    summary.failed.append(Problem(f"{item.source}:{item.line}", item.reason, "failed"))
                    continue
                if jsonl and not self._claim(item.doc_id, source, run, summary):
                    run.unsure.add(source)
                    continue
                loaded += 1
                state = manifest.get(col, item.doc_id)
                if state and state.content_hash == item.content_hash and state.status == "done":
                    summary.unchanged += 1
                    continue
                yield item
            if jsonl and loaded:
                self._clear_file_failure(ref)
        except LoadError as exc:
            run.unsure.add(source)
            self._record_problem(ref, digest, Problem(source, exc.reason, "skipped" if exc.skipped else "failed"), summary)

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

    def _flush(self, docs: list[Document], summary: IngestSummary, run: _Run) -> None:
        if run.stamps:
            self.kb.manifest.set_file_stamps(self.kb.collection, run.stamps)
            run.stamps.clear()
        if not docs:
            return
        kb, col = self.kb, self.kb.collection
        for d in docs:
            for key, value in d.stats.items():
                summary.stats[key] = summary.stats.get(key, 0.0) + value
        chunks = {d.doc_id: self.chunker.chunk(d.doc_id, d.texts) for d in docs}
        all_chunks = [c for d in docs for c in chunks[d.doc_id]]
        texts = [c.text for c in all_chunks]
        clip_text = kb.clip.embed_texts(texts) if texts else []
        text_vecs = kb.text.embed_texts([c.embed_text for c in all_chunks]) if texts else []
        summary.clip_embeddings += len(texts)
        summary.text_embeddings += len(texts)

        images = [(d, a) for d in docs for a in d.images]
        labels = [_image_label(d, a) for d, a in images]
        image_vecs: dict[int, Any] = {}
        failed_docs: dict[str, str] = {}
        for i, vec in kb.clip.iter_image_embeddings([a for _, a in images], labels):
            doc, _ = images[i]
            if isinstance(vec, LoadError):
                if doc.doc_type == "image":
                    failed_docs[doc.doc_id] = vec.reason
                else:
                    summary.warnings.append(f"{labels[i]}: {vec.reason} (image left out)")
            else:
                image_vecs[i] = vec
        summary.clip_embeddings += len(image_vecs)

        clip_records: list[Record] = []
        text_records: list[Record] = []
        counts: dict[str, list[int]] = {d.doc_id: [0, 0] for d in docs}
        pos = 0
        for d in docs:
            for c in chunks[d.doc_id]:
                meta = _chunk_meta(d, c)
                rid = f"{d.doc_id}#t{c.index}"
                clip_records.append(Record(rid, clip_text[pos].tolist(), meta, c.text))
                text_records.append(Record(rid, text_vecs[pos].tolist(), meta, c.text))
                counts[d.doc_id][0] += 1
                counts[d.doc_id][1] += 1
                pos += 1
        for i, (d, a) in enumerate(images):
            if i in image_vecs and d.doc_id not in failed_docs:
                clip_records.append(Record(f"{d.doc_id}#i{a.index}", image_vecs[i].tolist(), _image_meta(d, a), None))
                counts[d.doc_id][0] += 1

        # Open the identity-checked collections before touching anything, so a mismatched
        # collection is refused before any record is deleted (delete_records then uses them).
        clip_store, text_store = kb.clip_store, kb.text_store
        # 1) mark pending, 2) drop old records, 3) write new ones (Chroma, then the keyword index
        # in one commit), 4) mark done.
        manifest = kb.manifest
        manifest.set_states(col, [DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "pending", "", 0, 0) for d in docs])
        kb.delete_records([d.doc_id for d in docs])
        clip_store.upsert(clip_records, fresh=True)
        text_store.upsert(text_records, fresh=True)
        kb.keyword.write(delete_docs=[d.doc_id for d in docs], records=text_records)
        final = []
        for d in docs:
            n_clip, n_text = counts[d.doc_id]
            if d.doc_id in failed_docs:
                final.append(DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "failed", failed_docs[d.doc_id], 0, 0))
                summary.failed.append(Problem(d.source, failed_docs[d.doc_id], "failed"))
            elif n_clip == 0:
                reason = "nothing to index: no text and no readable images"
                final.append(DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "skipped", reason, 0, 0))
                summary.skipped.append(Problem(d.source, reason, "skipped"))
            else:
                final.append(DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "done", "", n_clip, n_text))
                summary.indexed += 1
        manifest.set_states(col, final)

    def _prune(self, roots: list[Path], run: _Run) -> int:
        """Remove documents under ``roots`` whose source is gone.

        A document this run did not see is kept when its source still exists and did not load
        completely (a corrupt file, a JSONL with bad lines): only a JSONL record missing from a
        file that loaded without problems, or a document whose file is gone, is removed.
        """
        col = self.kb.collection
        gone: list[str] = []
        for scope in {os.path.abspath(p) for p in roots}:  # the loaders' source paths are abspath'd too
            for state in self.kb.manifest.under(col, scope):
                inside = state.source == scope or state.source.startswith(scope.rstrip("/") + "/")
                if not inside or state.doc_id in run.seen or state.source in run.unsure:
                    continue
                if os.path.exists(state.source) and not state.source.endswith(".jsonl"):
                    continue  # a file that exists but was not discovered (now too big, unsupported): keep
                gone.append(state.doc_id)
        return self._delete(sorted(set(gone))) if gone else 0

    def _repair(self) -> int:
        """Make the manifest and the stores agree before a run (the stores are treated as fallible).

        Totals first (one count per store): when they agree and nothing is pending, nothing is
        read. Otherwise the per-document counts of the manifest's documents are compared, in
        batches: documents whose Chroma records are off go back to ``pending`` and are redone;
        documents whose keyword rows alone are off get them rewritten from the text store (no
        embedding); records of documents the manifest does not know (orphans) are deleted.

        Returns:
            The number of documents redone or whose keyword rows were rewritten.
        """
        kb, col = self.kb, self.kb.collection
        manifest = kb.manifest
        want_clip, want_text = manifest.totals(col)
        clip, text = kb.raw_store("clip"), kb.raw_store("text")
        try:
            keyword = kb.keyword
            have_keyword = keyword.count()
        except StoreError as exc:  # unreadable (a crash mid-copy, a full disk): rebuilt below from the text store
            keyword, have_keyword = kb.replace_damaged_keyword_index(str(exc)), 0
        pending = list(manifest.all(col, "pending"))
        have = (clip.count(), text.count(), have_keyword)
        if not pending and have == (want_clip, want_text, want_text):
            return 0
        known = {s.doc_id: s for s in manifest.all(col) if s.status != "pending"}
        ids = sorted(known)
        redo: dict[str, DocState] = {s.doc_id: s for s in pending}
        for store, attr, total in ((clip, "n_clip", have[0]), (text, "n_text", have[1])):
            counts: dict[str, int] = {}
            for _, meta, _ in store.records_of(ids):
                counts[str(meta.get("doc_id"))] = counts.get(str(meta.get("doc_id")), 0) + 1
            redo.update({d: s for d, s in known.items() if counts.get(d, 0) != getattr(s, attr)})
            if total > sum(counts.values()):
                self._delete_orphans(store, set(known) | set(redo))
        try:
            rows = keyword.doc_counts()
        except StoreError as exc:  # its count was readable but its segments are not
            keyword, rows = kb.replace_damaged_keyword_index(str(exc)), {}
        orphans = [d for d in rows if d not in known and d not in redo]
        rewrite = [d for d, s in known.items() if d not in redo and rows.get(d, 0) != s.n_text]
        if orphans:
            keyword.delete_docs(orphans)
        if rewrite:
            records = [Record(rid, (), meta, doc or "") for rid, meta, doc in text.records_of(rewrite, ("metadatas", "documents"))]
            keyword.write(delete_docs=rewrite, records=records)
        if redo:
            log.warning("Collection %r: %d documents disagree with the stores and will be redone", col, len(redo))
            manifest.set_states(col, [DocState(s.doc_id, s.source, s.doc_type, "", "pending", "redo: store and manifest disagreed", 0, 0) for s in redo.values()])
        return len(redo) + len(rewrite)

    def _delete_orphans(self, store: Any, known: set[str]) -> None:
        # The only full scan on the write path: reached when a store holds more records than the
        # manifest accounts for, which only a crash inside a delete (or a foreign writer) leaves.
        orphans = sorted({str(meta.get("doc_id")) for _, meta, _ in store.iter_all() if str(meta.get("doc_id")) not in known})
        if orphans:
            log.warning("Collection %r: deleting records of %d documents the manifest does not know", store.name, len(orphans))
            store.delete_docs(orphans)

def _image_label(doc: Document, asset: ImageAsset) -> str:
    if doc.doc_type == "image":
        return doc.source
    where = f"page={asset.page}," if asset.page is not None else ""
    return f"{doc.source}#{where}image={asset.index}"


def _base_meta(doc: Document) -> dict[str, Any]:
    meta: dict[str, Any] = {"doc_id": doc.doc_id, "source": doc.source, "doc_type": doc.doc_type}
    for key, value in doc.metadata.items():
        if isinstance(value, (str, int, float, bool)) and key not in meta:
            meta[key] = value
    return meta


def _chunk_meta(doc: Document, chunk: Chunk) -> dict[str, Any]:
    meta = {**_base_meta(doc), **chunk.metadata, "modality": "text", "chunk": chunk.index,
            "start": chunk.start, "end": chunk.end}
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta


def _image_meta(doc: Document, asset: ImageAsset) -> dict[str, Any]:
    meta = {**_base_meta(doc), "modality": "image", "image_index": asset.index}
    if asset.page is not None:
        meta["page"] = asset.page
    if asset.name:
        meta["image_name"] = asset.name
    return meta
