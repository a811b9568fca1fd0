"""The ingestion service: files -> documents -> chunks -> embeddings -> three indexes.

Crash safety (see :mod:`mmrag.manifest`): a document's records are written only while its
manifest row is ``pending``; record ids are deterministic (``doc_id#t<n>`` for chunks,
``doc_id#i<n>`` for images); a redo deletes a document's records before writing them again. So a
run killed at any moment and rerun ends exactly as an uninterrupted run would.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mmrag.chunking import SentenceChunker
from mmrag.errors import LoadError
from mmrag.kb import KnowledgeBase
from mmrag.keyword import KeywordIndex
from mmrag.loaders import DiscoveryProblem, FileRef, JsonlFields, LoaderLimits, discover, file_sha256, load
from mmrag.manifest import DocState
from mmrag.types import Chunk, Document, ImageAsset, Record

BM25_DIRTY = "bm25_dirty"
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
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "collection": self.collection, "files_seen": self.files_seen, "indexed": self.indexed,
            "unchanged": self.unchanged, "pruned": self.pruned, "repaired": self.repaired,
            "embeddings": {"clip": self.clip_embeddings, "text": self.text_embeddings},
            "failed": [p.__dict__ for p in self.failed], "skipped": [p.__dict__ for p in self.skipped],
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
        }


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
            return self._ingest(paths, prune, progress)

    def _ingest(self, paths: Sequence[Path], prune: bool,
                progress: Callable[[int, int], None] | None) -> IngestSummary:
        started = time.monotonic()
        kb, col = self.kb, self.kb.collection
        summary = IngestSummary(collection=col)
        summary.repaired = self._repair()
        found = list(discover([Path(p) for p in paths]))
        refs = [r for r in found if isinstance(r, FileRef)]
        for problem in (r for r in found if isinstance(r, DiscoveryProblem)):
            status = "skipped" if problem.reason.startswith("unsupported") else "failed"
            (summary.skipped if status == "skipped" else summary.failed).append(Problem(problem.path, problem.reason, status))
        summary.files_seen = len(refs)
        seen: set[str] = set()
        batch: list[Document] = []
        items = 0
        for n, ref in enumerate(refs, 1):
            for doc in self._changed_documents(ref, seen, summary):
                batch.append(doc)
                items += sum(len(b.text) // 800 + 1 for b in doc.texts) + len(doc.images)
                if items >= FLUSH_ITEMS:
                    self._flush(batch, summary)
                    batch, items = [], 0
            if progress:
                progress(n, len(refs))
        self._flush(batch, summary)
        if prune:
            summary.pruned = self._prune([Path(p) for p in paths], seen)
        self.rebuild_keyword_index(only_if_dirty=True)
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
        kb.manifest.set_flag(col, BM25_DIRTY, "1")
        kb.delete_records(known)
        kb.manifest.remove(col, known)
        self.rebuild_keyword_index(only_if_dirty=True)
        return len(known)

    def rebuild_keyword_index(self, *, only_if_dirty: bool = False) -> int:
        """Rebuild BM25 from the text collection. Returns the number of chunks indexed."""
        kb, col = self.kb, self.kb.collection
        if only_if_dirty and kb.manifest.flag(col, BM25_DIRTY) is None and kb.keyword_dir.exists():
            return -1
        rows = sorted(kb.raw_store("text").iter_all(include=("metadatas", "documents")), key=lambda r: r[0])
        index = KeywordIndex.build(
            [r[0] for r in rows], [r[2] or "" for r in rows],
            # All of a chunk's metadata, so search filters apply to BM25 exactly as to Chroma.
            [{**r[1], "text": r[2] or ""} for r in rows],
        )
        index.save(kb.keyword_dir)
        kb.manifest.set_flag(col, BM25_DIRTY, None)
        return len(rows)

    # -- steps --------------------------------------------------------------------------------
    def _changed_documents(self, ref: FileRef, seen: set[str], summary: IngestSummary) -> list[Document]:
        """Load ``ref`` unless unchanged; record failures in the manifest and the summary."""
        manifest, col = self.kb.manifest, self.kb.collection
        try:
            digest = file_sha256(ref.path)
        except LoadError as exc:  # file_sha256 translates OSError (vanished, unreadable) itself
            seen.add(ref.doc_id)
            self._record_problem(ref, "", Problem(str(ref.path), exc.reason, "failed"), summary)
            return []
        if ref.suffix != ".jsonl":
            seen.add(ref.doc_id)
            state = manifest.get(col, ref.doc_id)
            if state and state.content_hash == digest and state.status != "pending":
                summary.unchanged += 1
                if state.status in {"failed", "skipped"}:
                    bucket = summary.failed if state.status == "failed" else summary.skipped
                    bucket.append(Problem(str(ref.path), state.reason + " (unchanged since last run)", state.status))
                return []
        try:
            docs = load(ref, content_hash=digest, jsonl=self.jsonl, limits=self.limits)
        except LoadError as exc:
            self._record_problem(ref, digest, Problem(str(ref.path), exc.reason, "skipped" if exc.skipped else "failed"), summary)
            return []
        changed = []
        for doc in docs:
            seen.add(doc.doc_id)
            state = manifest.get(col, doc.doc_id)
            if state and state.content_hash == doc.content_hash and state.status == "done":
                summary.unchanged += 1
                continue
            changed.append(doc)
        return changed

    def _record_problem(self, ref: FileRef, digest: str, problem: Problem, summary: IngestSummary) -> None:
        manifest, col = self.kb.manifest, self.kb.collection
        (summary.failed if problem.status == "failed" else summary.skipped).append(problem)
        old = manifest.get(col, ref.doc_id)
        if old is not None and old.status == "pending":
            # An interrupted write left partial records: they must not outlive the failure.
            self.kb.delete_records([ref.doc_id])
        kept = old is not None and old.status == "done" and (old.n_clip or old.n_text)
        reason = problem.reason + ("; the previously indexed version is kept" if kept else "")
        manifest.set_states(col, [DocState(
            ref.doc_id, str(ref.path), ref.suffix.lstrip("."), digest, problem.status, reason,
            old.n_clip if kept and old else 0, old.n_text if kept and old else 0,
        )])

    def _flush(self, docs: list[Document], summary: IngestSummary) -> None:
        if not docs:
            return
        kb, col = self.kb, self.kb.collection
        chunks = {d.doc_id: self.chunker.chunk(d.doc_id, d.texts) for d in docs}
        all_chunks = [c for d in docs for c in chunks[d.doc_id]]
        texts = [c.text for c in all_chunks]
        clip_text = kb.clip.embed_texts(texts) if texts else []
        text_vecs = kb.text.embed_texts(texts) if texts else []
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
        # 1) mark pending, 2) drop old records, 3) write new ones, 4) mark done.
        manifest = kb.manifest
        manifest.set_flag(col, BM25_DIRTY, "1")
        manifest.set_states(col, [DocState(d.doc_id, d.source, d.doc_type, d.content_hash, "pending", "", 0, 0) for d in docs])
        kb.delete_records([d.doc_id for d in docs])
        clip_store.upsert(clip_records)
        text_store.upsert(text_records)
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

    def _prune(self, roots: list[Path], seen: set[str]) -> int:
        """Remove documents under ``roots`` that this run did not see."""
        col = self.kb.collection
        scopes = [os.path.abspath(p) for p in roots]  # the loaders' source paths are abspath'd too
        gone = [
            s.doc_id for s in self.kb.manifest.all(col)
            if s.doc_id not in seen and any(s.source == sc or s.source.startswith(sc.rstrip("/") + "/") for sc in scopes)
        ]
        return self.delete(gone) if gone else 0

    def _repair(self) -> int:
        """Make the manifest and the stores agree before a run (the store is treated as fallible).

        Documents whose record counts differ from the manifest are set back to ``pending`` so this
        run redoes them; records of documents the manifest does not know are deleted.
        """
        kb, col = self.kb, self.kb.collection
        manifest = kb.manifest
        want_clip, want_text = manifest.totals(col)
        clip, text = kb.raw_store("clip"), kb.raw_store("text")
        pending = list(manifest.all(col, "pending"))
        if not pending and clip.count() == want_clip and text.count() == want_text:
            return 0
        known = {s.doc_id: s for s in manifest.all(col)}
        redo: dict[str, DocState] = {s.doc_id: s for s in pending}
        for store, attr in ((clip, "n_clip"), (text, "n_text")):
            have: dict[str, int] = {}
            for _, meta, _ in store.iter_all():
                doc_id = str(meta.get("doc_id"))
                have[doc_id] = have.get(doc_id, 0) + 1
            orphans = [d for d in have if d not in known]
            if orphans:
                store.delete_docs(orphans)
            for doc_id, state in known.items():
                if state.status != "pending" and have.get(doc_id, 0) != getattr(state, attr):
                    redo[doc_id] = state
        if redo:
            manifest.set_states(col, [DocState(s.doc_id, s.source, s.doc_type, "", "pending", "redo: store and manifest disagreed", 0, 0) for s in redo.values()])
            manifest.set_flag(col, BM25_DIRTY, "1")
        return len(redo)


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
    meta = {**_base_meta(doc), "modality": "text", "chunk": chunk.index, "start": chunk.start, "end": chunk.end}
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
