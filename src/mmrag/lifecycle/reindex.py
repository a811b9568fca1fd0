"""Build a new version of a knowledge base from the live version's sources, while the live one serves.

``reindex`` reads which files the live version was built from (the manifest's document rows:
each row's source path and doc id give the file and the root its id is relative to), ingests
exactly those files with the same doc ids into a new physical collection (``kb--vN``) with the
new chunk size or models, then catches up under the knowledge base's lifecycle lock and the live
version's writer lock: files that changed or arrived meanwhile are ingested again (unchanged ones
cost a ``stat``), documents the live version lost are deleted; when another version went live
meanwhile (a rollback), the catch-up follows the one live at the end. The new version is then
``ready``; nothing serves it until ``promote``, which catches it up once more (:func:`catch_up`).

The build is an ordinary ingest, so it is resumable: a reindex killed part-way leaves its version
``building``, and the next ``mmrag reindex`` with the same settings resumes it (finished
documents are not embedded again). The live version is never written by a reindex.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mmrag.chunking import ChunkSpec
from mmrag.errors import InvalidInputError
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.probes import ProbeStore
from mmrag.lifecycle.roots import refuse_outside
from mmrag.lifecycle.versions import Version, Versions, split_label
from mmrag.loaders import FileRef
from mmrag.redaction import parse_policy, policy_text, stored_policy
from mmrag.registry import ModelChoice
from mmrag.sources import ObjectRef, is_url, ref_for

log = logging.getLogger(__name__)


@dataclass
class ReindexResult:
    """What a reindex built."""

    version: Version
    source: str  # the live version's label it was built from
    documents: int = 0
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    resumed: bool = False
    missing: list[str] = field(default_factory=list)  # sources that no longer exist
    failed: list[dict[str, str]] = field(default_factory=list)
    redact: tuple[str, ...] = ()  # the new version's redaction policy
    redactions: dict[str, int] = field(default_factory=dict)  # values replaced by this run, by kind

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.to_dict(), "from": self.source, "documents": self.documents,
                "indexed": self.indexed, "unchanged": self.unchanged, "removed": self.removed,
                "resumed": self.resumed, "missing_sources": self.missing, "failed": self.failed,
                "redact": list(self.redact), "redactions": self.redactions}


def source_files(kb: KnowledgeBase, allow_outside_roots: bool = False,
                 storage_options: Mapping[str, Any] | None = None) -> tuple[list[FileRef | ObjectRef], list[str]]:
    """The files ``kb``'s documents came from, with the doc ids they were given; and the sources now missing.

    A file's doc id is its path relative to the folder it was ingested under, so the root is the
    source path less the doc id. A JSONL corpus holds many documents whose ids are not paths: it
    is one file, keyed by its own name. An object URL is re-read from its bucket (with
    ``storage_options``), its doc id relative to its prefix in the same way.
    """
    refs: dict[str, FileRef | ObjectRef] = {}
    missing: list[str] = []
    states = [s for s in kb.manifest.all(kb.collection) if s.status != "skipped"]
    # Before the file system is asked anything about them: a restored row can name any path.
    refuse_outside(kb.manifest, kb.collection, sorted({s.source for s in states}), allow_outside=allow_outside_roots,
                   action="reindex")
    for state in states:
        if state.source in refs:
            continue
        if is_url(state.source):
            found = ref_for(state.source, state.doc_id, storage_options or {})
            if found is None:
                missing.append(state.source)
            else:
                refs[state.source] = found
            continue
        source = Path(state.source)
        if source.suffix.lower() == ".jsonl":
            ref = FileRef.from_path(source)
        elif state.source.endswith("/" + state.doc_id) or state.source == state.doc_id:
            ref = FileRef.from_path(source, state.source[: len(state.source) - len(state.doc_id)] or ".")
        else:
            ref = FileRef.from_path(source)
        if not os.path.exists(source):
            missing.append(state.source)
            continue
        refs[state.source] = ref
    return sorted(refs.values(), key=lambda r: str(r.path)), missing


def reindex(kb_name: str, *, open_kb: Callable[[str, ChunkSpec], KnowledgeBase], chunk: ChunkSpec,
            models: ModelChoice, progress: Callable[[int, int], None] | None = None,
            allow_outside_roots: bool = False, redact: Sequence[str] | None = None,
            storage_options: Mapping[str, Any] | None = None) -> ReindexResult:
    """Build a new version of ``kb_name`` from its live version's sources (see the module docstring).

    Args:
        kb_name: the knowledge base (not a version label).
        open_kb: opens a knowledge base (its live version) or a version label ``kb@N``, with a chunk
            spec (the caller's store and models). Labels, never physical names: version 1's
            physical name is the knowledge base's own, which would open the live version.
        chunk: the new version's chunk sizing.
        models: the new version's models (recorded with the version).
        progress: called with (files done, files total) during the main build.
        allow_outside_roots: read sources outside the roots the knowledge base was ingested from
            (see :mod:`mmrag.lifecycle.roots`).
        redact: the new version's redaction policy (:mod:`mmrag.redaction`); None keeps the live
            version's. Changing it is what a reindex is for: every document is read and scrubbed again.
        storage_options: how to read sources in object storage (:func:`mmrag.sources.storage_options`).

    Raises:
        NotFoundError: ``kb_name`` holds no documents.
        InvalidInputError: ``kb_name`` is a version label, a collection of that name is in the way, or a
            source lies outside the knowledge base's roots.
    """
    from mmrag.indexing import Indexer

    if split_label(kb_name)[1] is not None:
        raise InvalidInputError(f"reindex takes a knowledge base name, not a version: use {split_label(kb_name)[0]!r}")
    live_kb = open_kb(kb_name, chunk)
    versions = Versions(live_kb.manifest)
    live_physical = versions.resolve(kb_name)
    if not live_kb.manifest.has_collection(live_physical):
        from mmrag.errors import NotFoundError

        raise NotFoundError(f"no knowledge base {kb_name!r} to reindex; ingest documents into it first")
    versions.adopt_if_unversioned(kb_name)
    live = versions.get(kb_name, versions.live_number(kb_name) or 1)
    policy = parse_policy(redact) if redact is not None else (stored_policy(live_kb.manifest, live.physical) or ())
    wanted = {"chunk_size": chunk.size, "chunk_overlap": chunk.overlap, "clip": models.clip.model,
              "clip_pretrained": str(models.clip.pretrained), "text": models.text_model,
              "redact": policy_text(policy), "from": live.label}
    version, resumed = _resume_or_begin(versions, kb_name, wanted)
    target = open_kb(version.label, chunk)
    result = ReindexResult(version=version, source=live.label, resumed=resumed, redact=policy)
    try:
        with target.write_lock():
            refs, result.missing = source_files(live_kb, allow_outside_roots, storage_options)
            for path in result.missing:
                log.warning("reindex %s: source %s no longer exists; its documents are left out", version.label, path)
            # The version's policy is recorded by its first write; the catch-ups below apply it.
            summary = Indexer(target, redact=policy).ingest([], files=refs, progress=progress)
            result.indexed, result.unchanged = summary.indexed, summary.unchanged
            result.redactions = summary.redactions
            result.failed = [{"path": p.path, "reason": p.reason} for p in summary.failed]
        # The finish runs under the lifecycle lock, taken before any writer lock (the order every
        # lifecycle step keeps): the live version may have changed meanwhile (a rollback), so the
        # catch-up reads the one live now, and a prune or drop cannot remove either version under it.
        with versions.lock(kb_name):
            versions.get(kb_name, version.number)  # NotFoundError if a drop removed it meanwhile
            live_now = versions.get(kb_name, versions.live_number(kb_name) or 1)
            if live_now.number != live.number:
                log.warning("reindex %s: %s went live meanwhile; catching up from it", version.label, live_now.label)
                live_kb.close()
                live_kb, live, result.source = open_kb(live_now.label, chunk), live_now, live_now.label
                wanted["from"] = live.label
            # Catch up with what the live version took in meanwhile, holding its writer lock so
            # that nothing more arrives until the new version is complete.
            with target.write_lock(), live_kb.write_lock():
                refs, result.missing = source_files(live_kb, allow_outside_roots, storage_options)
                again = Indexer(target).ingest([], files=refs)
                result.indexed += again.indexed
                for kind, n in again.redactions.items():
                    result.redactions[kind] = result.redactions.get(kind, 0) + n
                live_ids = {s.doc_id for s in live_kb.manifest.all(live_kb.collection)}
                gone = [s.doc_id for s in target.manifest.all(target.collection) if s.doc_id not in live_ids]
                result.removed = Indexer(target).delete(gone) if gone else 0
                result.documents = target.manifest.counts(target.collection).get("done", 0)
                identity = {"clip": _identity(target, "clip"), "text": _identity(target, "text")}
                versions.set_state(kb_name, version.number, "ready",
                                   {**wanted, **identity, "documents": result.documents})
    except BaseException:
        # Left ``building``: a rerun with the same settings resumes it; nothing of the live version changed.
        log.error("reindex %s did not finish; rerun `mmrag reindex %s` with the same options to resume it",
                  version.label, kb_name)
        raise
    finally:
        target.close()
        live_kb.close()
    result.version = versions.get(kb_name, version.number)
    return result


def catch_up(kb_name: str, number: int, *, versions: Versions, open_kb: Callable[[str], KnowledgeBase],
             then: Callable[[], Any]) -> int:
    """Bring ``kb@number`` up to the live version's documents, then run ``then`` (the switch) under the same locks.

    A version about to go live (a promote, a rollback) was built, or last served, some time ago;
    uploads and deletes since went to the live version only, and would be lost to readers at the
    switch. Under both writer locks (taken after the lifecycle lock, which the caller holds), the
    live version's sources are ingested into the target (unchanged files cost a ``stat``) and
    documents the live version no longer has are deleted from it; ``then`` runs before the locks
    are let go, so no write that took the live version's writer lock first is left behind. When
    the manifest shows the two already hold the same documents, the stores are not opened at all.

    A writer that resolved the alias before the switch but takes the writer lock after it still
    writes the old version: closing that needs the writer to check the alias under its lock.

    Args:
        kb_name: the knowledge base's name.
        number: the version about to go live.
        versions: the data dir's versions.
        open_kb: opens a version by its label, models attached; what it opens stays open (a
            server's openers hand out knowledge bases they keep).
        then: the switch, run under the locks.

    Returns:
        Documents indexed or deleted in the target.
    """
    from mmrag.indexing import Indexer

    live = versions.get(kb_name, versions.live_number(kb_name) or 1)
    target = versions.get(kb_name, number)
    if live.number == number:
        then()
        return 0
    # Opening is lazy: the stores are touched only when there is something to catch up.
    live_kb, target_kb = open_kb(live.label), open_kb(target.label)
    changed = 0
    with target_kb.write_lock(), live_kb.write_lock():
        # Compared under the locks: a write to the live version in flight has finished by now.
        if _holdings(versions.manifest, live.physical) != _holdings(versions.manifest, target.physical):
            refs, _missing = source_files(live_kb)
            changed = Indexer(target_kb).ingest([], files=refs).indexed
            live_ids = {s.doc_id for s in live_kb.manifest.all(live_kb.collection)}
            gone = [s.doc_id for s in target_kb.manifest.all(target_kb.collection) if s.doc_id not in live_ids]
            changed += Indexer(target_kb).delete(gone) if gone else 0
        then()
    if changed:
        log.warning("%s caught up with %s before going live: %d document(s) indexed or deleted", target.label,
                    live.label, changed)
    return changed


def _holdings(manifest: Any, physical: str) -> set[tuple[str, str, str]]:
    return {(s.doc_id, s.content_hash, s.status) for s in manifest.all(physical)}


def _resume_or_begin(versions: Versions, kb_name: str, wanted: dict[str, Any]) -> tuple[Version, bool]:
    same = {k: v for k, v in wanted.items() if k != "from"}  # what must match to resume a build
    for v in reversed(versions.list(kb_name)):
        if v.state == "building" and {k: v.settings.get(k) for k in same} == same:
            log.warning("resuming the interrupted build of %s", v.label)
            return v, True
    return versions.begin(kb_name, wanted), False


def _identity(kb: KnowledgeBase, which: str) -> dict[str, Any]:
    return dict(getattr(kb.bare_store(which), "identity", None) or {})


def drop_knowledge_base(manifest_kb: KnowledgeBase, name: str, open_bare: Callable[[str], KnowledgeBase]) -> list[str]:
    """Delete a knowledge base everywhere: each of its versions, its probes and its lifecycle rows.

    ``open_bare`` opens a version by its label ``kb@N`` (see :func:`reindex`), without models.

    Returns:
        The physical collections dropped.
    """
    versions = Versions(manifest_kb.manifest)
    with versions.lock(name):  # a promote, rollback or reindex of ``name`` in flight finishes first
        listed = versions.list(name)
        for label in [v.label for v in listed] or [name]:
            kb = open_bare(label)
            with kb.write_lock():
                kb.drop()
        manifest = manifest_kb.manifest
        with manifest.transaction() as db:  # each owner's rows, in one transaction
            Versions.remove_kb(db, name)
            ProbeStore(manifest).remove_all(name, db)
            manifest.remove_roots(name, db)
    return [v.physical for v in listed] or [name]
