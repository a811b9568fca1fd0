"""The one repair path: make a collection's stores agree with its manifest again.

"The stores agree with the manifest" means: every settled document holds exactly the records its
row counts in each Chroma collection, the keyword index holds one row per text record, and no
store holds a record of a document the manifest does not count. Three callers need it, and all
three go through this module:

* ingest, before every run (:func:`before_ingest`): totals first, a per-document count only
  when they disagree, a scan for orphans only when a store holds more than the manifest counts;
* ``mmrag doctor --repair`` (:func:`apply`), with the plan :func:`mmrag.lifecycle.doctor.examine`
  made from a full read of every store;
* a rebuild of the keyword index from the text collection (:func:`rebuild_keyword`: a damaged
  index, the migration from the JSON BM25 era).

A :class:`RepairPlan` says what to do; :func:`apply` does it in one order: delete orphan records
(and their keyword rows), rewrite stale keyword rows from the text collection (no embedding) or
rebuild an unreadable index whole, then set the documents whose records are off back to
``pending`` so that an ingest redoes them from their sources. The caller holds the collection's
writer lock.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mmrag.errors import StoreError
from mmrag.loaders import FileRef
from mmrag.manifest import DocState
from mmrag.protocols import KeywordIndex, VectorStore
from mmrag.sources import ObjectRef, is_url, ref_for
from mmrag.types import Record

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase

log = logging.getLogger(__name__)
#: Documents whose keyword rows are rewritten per commit.
REWRITE_BATCH = 500
#: Records read back per commit when the keyword index is rebuilt whole from the text collection.
REBUILD_BATCH = 5000


@dataclass
class RepairPlan:
    """What :func:`apply` does; complete sets (a doctor finding shows only examples)."""

    redo: set[str] = field(default_factory=set)  # documents to ingest again (missing, surplus, pending)
    orphans: dict[str, set[str]] = field(default_factory=dict)  # physical collection -> unknown doc ids
    loose: dict[str, list[str]] = field(default_factory=dict)  # physical collection -> ids of records with no doc_id
    keyword_rewrite: set[str] = field(default_factory=set)  # docs whose keyword rows go back to the text store's
    keyword_damaged: str | None = None  # why the keyword index cannot be read (rebuilt whole)
    identity_ok: bool = True  # False: built with another model, so nothing is re-ingested into it

    @property
    def empty(self) -> bool:
        return not (self.redo or any(self.orphans.values()) or any(self.loose.values()) or self.keyword_rewrite
                    or self.keyword_damaged is not None)


@dataclass
class RepairReport:
    """What :func:`apply` did, what it could not do, and (from the doctor) the examination after it."""

    collection: str
    orphans_deleted: int = 0  # documents whose orphan records were deleted (summed over collections)
    keyword_rewritten: int = 0  # documents whose keyword rows were rewritten
    keyword_rebuilt: int | None = None  # rows written when an unreadable index was rebuilt whole
    reingested: list[str] = field(default_factory=list)  # doc ids set pending and ingested again
    paths: list[str] = field(default_factory=list)  # the source files ingested again
    unrepairable: list[dict[str, str]] = field(default_factory=list)
    ingest: dict[str, Any] | None = None
    after: Any = None  # a mmrag.lifecycle.doctor.DoctorReport

    @property
    def healthy(self) -> bool:
        return self.after is not None and self.after.healthy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"collection": self.collection, "orphans_deleted": self.orphans_deleted,
                "keyword_rewritten": self.keyword_rewritten, "keyword_rebuilt": self.keyword_rebuilt,
                "reingested": self.reingested, "paths": self.paths, "unrepairable": self.unrepairable,
                "ingest": self.ingest, "after": self.after.to_dict() if self.after is not None else None}


#: Ingests these files (each with its doc id) and returns the run's summary as a dict.
Reingest = Callable[[list[FileRef | ObjectRef]], dict[str, Any]]
#: Says why a source may not be read (outside the collection's roots), or None when it may.
SourceCheck = Callable[[list[str]], dict[str, str]]


def apply(kb: "KnowledgeBase", plan: RepairPlan, *, reingest: Reingest | None = None,
          refuse_sources: SourceCheck | None = None, reason: str = "redo: store and manifest disagreed",
          storage_options: Mapping[str, Any] | None = None) -> RepairReport:
    """Do what ``plan`` says, in the one safe order (the caller holds the writer lock).

    Args:
        kb: the collection.
        plan: from :func:`plan_before_ingest` or :func:`mmrag.lifecycle.doctor.examine`.
        reingest: ingests the documents to redo from their sources, now. ``None`` (ingest's own
            repair) only sets them ``pending``: the run that follows redoes the ones it reads.
        refuse_sources: with ``reingest``, the sources that may not be read, each with why.
        reason: the ``pending`` rows' reason.
        storage_options: how to read sources in object storage, for ``reingest``
            (:func:`mmrag.sources.storage_options`).

    Returns:
        What was done.
    """
    out = RepairReport(kb.collection)
    out.orphans_deleted = delete_orphans(kb, plan)
    if plan.keyword_damaged is not None:
        out.keyword_rebuilt = rebuild_keyword(kb, kb.replace_damaged_keyword_index(plan.keyword_damaged))
    elif rewrite := sorted(plan.keyword_rewrite - {d for docs in plan.orphans.values() for d in docs}):
        out.keyword_rewritten = rewrite_keyword(kb, rewrite)
    if plan.redo:
        _redo(kb, plan, out, reingest, refuse_sources or (lambda _: {}), reason, storage_options or {})
    return out


def delete_orphans(kb: "KnowledgeBase", plan: RepairPlan) -> int:
    """Delete the plan's orphan records from each physical collection, and their keyword rows.

    Returns:
        The number of documents whose records were deleted.
    """
    parts = {p.name: p for which in ("clip", "text") for p in kb.bare_store(which).parts()}
    done: set[str] = set()
    for name in sorted(set(plan.orphans) | set(plan.loose)):
        part = parts.get(name)
        if part is None:
            raise StoreError(f"Collection {kb.collection!r} has no store {name!r} to repair (known: "
                             f"{', '.join(sorted(parts))}); run `mmrag doctor` again")
        if docs := plan.orphans.get(name):
            part.delete_docs(sorted(docs))
            done.update(docs)
        if plan.loose.get(name):
            part.delete(plan.loose[name])
    unknown = sorted(done - plan.redo)
    if unknown:
        kb.keyword.delete_docs(unknown)
        log.warning("Collection %r: deleted the records of %d document(s) the manifest does not count",
                    kb.collection, len(unknown))
    return len(done)


def rewrite_keyword(kb: "KnowledgeBase", doc_ids: Sequence[str], index: KeywordIndex | None = None) -> int:
    """Replace these documents' keyword rows by the text collection's records (no embedding).

    Returns:
        The number of documents rewritten.
    """
    index = index or kb.keyword
    text = kb.bare_store("text")
    docs = list(doc_ids)
    for lo in range(0, len(docs), REWRITE_BATCH):
        part = docs[lo : lo + REWRITE_BATCH]
        records = [Record(rid, (), meta, body or "") for rid, meta, body in text.records_of(part, ("metadatas", "documents"))]
        index.write(delete_docs=part, records=records)
    return len(docs)


def rebuild_keyword(kb: "KnowledgeBase", index: KeywordIndex | None = None) -> int:
    """Rewrite the whole keyword index from the text collection (the caller holds the writer lock).

    Only for a damaged index or a migration: writes keep the index current in place.

    Args:
        kb: the collection.
        index: the index to fill (default ``kb.keyword``); it is cleared first.

    Returns:
        The number of rows written.
    """
    index = index or kb.keyword
    index.clear()
    batch: list[Record] = []
    total = 0
    for rid, meta, text in kb.bare_store("text").iter_all(include=("metadatas", "documents")):
        batch.append(Record(rid, (), meta, text or ""))
        if len(batch) >= REBUILD_BATCH:
            index.write(records=batch)
            total, batch = total + len(batch), []
    index.write(records=batch)
    return total + len(batch)


def before_ingest(kb: "KnowledgeBase") -> int:
    """Ingest's repair before a run: the plan of :func:`plan_before_ingest`, applied.

    Returns:
        The number of documents set back to ``pending`` or whose keyword rows were rewritten.
    """
    plan, counted = plan_before_ingest(kb)
    if plan.empty:
        return 0
    if plan.redo:
        log.warning("Collection %r: %d documents disagree with the stores and will be redone", kb.collection,
                    len(plan.redo))
    apply(kb, plan)
    return counted


def plan_before_ingest(kb: "KnowledgeBase") -> tuple[RepairPlan, int]:
    """What disagrees, read as cheaply as the stores allow (the stores are treated as fallible).

    Totals first (one count per store): when they agree and nothing is pending, nothing is read.
    Otherwise the per-document counts of the manifest's documents are compared: documents whose
    Chroma records are off are to be redone; documents whose keyword rows alone are off get them
    rewritten from the text store; records of documents the manifest does not know (orphans) are
    found by a scan, which only a store holding more than the manifest counts triggers.

    Returns:
        The plan, and the number of documents it redoes or rewrites (the summary's ``repaired``).
    """
    col, manifest, plan = kb.collection, kb.manifest, RepairPlan()
    want_clip, want_text = manifest.totals(col)
    clip, text = kb.bare_store("clip"), kb.bare_store("text")
    try:
        have_keyword: int | None = kb.keyword.count()
    except StoreError as exc:  # unreadable (a crash mid-copy, a full disk): rebuilt from the text store
        plan.keyword_damaged, have_keyword = str(exc), None
    pending = [s.doc_id for s in manifest.all(col, "pending")]
    have = (clip.count(), text.count(), have_keyword)
    if not pending and have == (want_clip, want_text, want_text):
        return plan, 0
    known = {s.doc_id: s for s in manifest.all(col) if s.status != "pending"}
    plan.redo.update(pending)
    # Pending documents' records are counted too: a long document another run is writing, a slice
    # at a time, holds more records than its row says, and must not send this repair scanning the
    # whole store for orphans.
    ids = sorted(set(known) | plan.redo)
    for store, attr, total in ((clip, "n_clip", have[0]), (text, "n_text", have[1])):
        counts: dict[str, int] = {}
        for _, meta, _ in store.records_of(ids):
            counts[str(meta.get("doc_id"))] = counts.get(str(meta.get("doc_id")), 0) + 1
        plan.redo.update(d for d, s in known.items() if counts.get(d, 0) != getattr(s, attr))
        if total > sum(counts.values()):
            _find_orphans(store, set(known) | plan.redo, plan)
    if plan.keyword_damaged is None:
        try:
            rows = kb.keyword.doc_counts()
        except StoreError as exc:  # its count was readable but its segments are not
            plan.keyword_damaged, rows = str(exc), {}
    # An unreadable index is rebuilt whole, which rewrites every settled document's rows.
    rewrite = [d for d in known if d not in plan.redo] if plan.keyword_damaged is not None else \
        [d for d, s in known.items() if d not in plan.redo and rows.get(d, 0) != s.n_text]
    # A keyword row of a document nobody counts is rewritten to nothing (the text store holds none).
    stray = [] if plan.keyword_damaged is not None else [d for d in rows if d not in known and d not in plan.redo]
    if plan.keyword_damaged is None:
        plan.keyword_rewrite.update(rewrite, stray)
    return plan, len(plan.redo) + len(rewrite)


def _find_orphans(store: VectorStore, known: set[str], plan: RepairPlan) -> None:
    # The only full scan on the write path: reached when a store holds more records than the
    # manifest accounts for, which only a crash inside a delete (or a foreign writer) leaves.
    for part in store.parts():
        unknown = {str(meta.get("doc_id")) for _, meta, _ in part.iter_all() if str(meta.get("doc_id")) not in known}
        if unknown:
            log.warning("Collection %r: deleting records of %d documents the manifest does not know", part.name,
                        len(unknown))
            plan.orphans.setdefault(part.name, set()).update(unknown)


def _redo(kb: "KnowledgeBase", plan: RepairPlan, out: RepairReport, reingest: Reingest | None,
          refuse_sources: SourceCheck, reason: str, storage_options: Mapping[str, Any]) -> None:
    col = kb.collection
    states = sorted((s for s in kb.manifest.all(col) if s.doc_id in plan.redo), key=lambda s: s.doc_id)
    if reingest is not None and not plan.identity_ok:
        out.unrepairable += [{"doc_id": s.doc_id, "source": s.source, "reason": "not re-ingested: the collection was "
                              "built with another embedding model (see identity_mismatch)"} for s in states]
        return
    redo = states
    objects: dict[str, ObjectRef] = {}
    if reingest is not None:
        refused = refuse_sources([s.source for s in states])  # asked before the file system is asked anything
        redo = []
        for s in states:
            if s.source in refused:
                out.unrepairable.append({"doc_id": s.doc_id, "source": s.source, "reason": refused[s.source]})
            elif is_url(s.source):  # re-read from the bucket
                found = objects.get(s.source) or ref_for(s.source, s.doc_id, storage_options)
                if found is not None:
                    objects[s.source] = found
                    redo.append(s)
                else:
                    out.unrepairable.append({"doc_id": s.doc_id, "source": s.source, "reason": "its object no "
                                             f"longer exists: restore it and rerun `mmrag doctor --repair`, or "
                                             f"`mmrag delete {s.doc_id}`"})
            elif os.path.exists(s.source):
                redo.append(s)
            else:
                out.unrepairable.append({"doc_id": s.doc_id, "source": s.source, "reason": "its source no longer "
                                         f"exists: restore it and rerun `mmrag doctor --repair`, or `mmrag delete "
                                         f"{s.doc_id}`"})
    if not redo:
        return
    # pending makes the ingest redo them whatever their files' stamps say (see Indexer._plan).
    kb.manifest.set_states(col, [DocState(s.doc_id, s.source, s.doc_type, "", "pending", reason, 0, 0) for s in redo])
    out.reingested = [s.doc_id for s in redo]
    if reingest is None:
        return
    refs = sorted({s.source: objects.get(s.source) or file_ref(s) for s in redo}.values(), key=lambda r: str(r.path))
    out.paths = [str(r.path) for r in refs]
    out.ingest = reingest(refs)


def file_ref(state: DocState) -> FileRef:
    """The file a document came from, with the doc id it was given (as :func:`reindex.source_files` finds it).

    A file's doc id is its path relative to the folder it was ingested under; a JSONL file's
    records carry their own ids, and the file is keyed by its name.
    """
    source = Path(state.source)
    nested = state.source.endswith("/" + state.doc_id) or state.source == state.doc_id
    if source.suffix.lower() != ".jsonl" and nested:
        return FileRef.from_path(source, state.source[: len(state.source) - len(state.doc_id)] or ".")
    return FileRef.from_path(source)
