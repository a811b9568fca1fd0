"""``mmrag doctor``: the manifest, the Chroma collections and the keyword index checked against each other.

:func:`check_health <mmrag.kb.check_health>` compares totals only, so damage that keeps a count
(one record lost, another left behind) passes it. :func:`examine` reads every store instead:

* counts: the manifest's totals against each store's count;
* records: every Chroma record's ``doc_id`` against the manifest, per collection. A settled
  document holding fewer records than its row counts is *missing*; records of a document the
  manifest does not know (or counts no records for), or more than its row counts, are *orphans*;
* the keyword index: its rows per document against the text collection (*stale*), or unreadable;
* embedding identity: what each collection was built with against the configured models;
* pending documents (an interrupted run), and probe recall when probes are defined.

The scans stream: Chroma records are read a page of ids and metadata at a time (never a text or a
vector), and what is kept is one count per document. The doctor only examines and reports;
:func:`repair` hands its plan to :func:`mmrag.indexing.repair.apply`, the repair ingest runs too, which
fixes what the manifest and the sources can: orphans are deleted, stale keyword rows are
rewritten from the text collection (no embedding), and documents with missing records are set
``pending`` and ingested again from their sources, under the collection's writer lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mmrag.errors import ConfigError, MissingDependencyError, StoreError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.probes import Probe, ProbeStore, run_probes
from mmrag.lifecycle.roots import outside_roots
from mmrag.lifecycle.roots import reason as roots_reason
from mmrag.lifecycle.versions import Versions, split_label
from mmrag.indexing.repair import RepairPlan, RepairReport, apply
from mmrag.stores.chroma import ENFORCED_IDENTITY

log = logging.getLogger(__name__)

#: Example ids or doc ids a finding lists (the counts are always complete).
EXAMPLES = 5
KINDS = ("count_mismatch", "missing_records", "orphan_records", "stale_keyword", "identity_mismatch", "pending",
         "probe_failing")


@dataclass(frozen=True)
class Finding:
    """One inconsistency: what, where, how many, a few examples, and what fixes it."""

    kind: str  # one of KINDS
    where: str  # a Chroma collection, "keyword", "manifest" or "probes"
    count: int  # documents (records for count_mismatch, probes for probe_failing)
    message: str
    fix: str
    repairable: bool
    examples: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "where": self.where, "count": self.count, "message": self.message,
                "fix": self.fix, "repairable": self.repairable, "examples": list(self.examples)}


@dataclass
class DoctorReport:
    """What :func:`examine` found in one physical collection. ``healthy`` when ``findings`` is empty."""

    collection: str
    label: str
    findings: list[Finding]
    #: Manifest expectations and store counts: ``expected`` (clip, text) and ``stores`` (per collection).
    counts: dict[str, Any]
    #: What could not be checked, and why (a model that would not load, no probes module).
    notes: list[str]
    seconds: float
    plan: RepairPlan = field(default_factory=RepairPlan, repr=False)

    @property
    def healthy(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"collection": self.collection, "label": self.label, "healthy": self.healthy,
                "findings": [f.to_dict() for f in self.findings], "counts": self.counts, "notes": self.notes,
                "seconds": round(self.seconds, 3)}


# -- examining ---------------------------------------------------------------------------------
def examine(kb: KnowledgeBase, *, probes: Sequence[Probe] | None = None, examples: int = EXAMPLES) -> DoctorReport:
    """Check ``kb``'s manifest, Chroma collections and keyword index against each other.

    Reads every record's id and metadata, a page at a time, and loads the configured models for
    the identity check (their identity is only known once loaded). Writes nothing.

    Args:
        kb: one physical collection (resolve an alias with :meth:`Versions.resolve` first).
        probes: the probes to run; ``None`` runs the knowledge base's stored probes, if any.
        examples: ids or doc ids listed per finding.

    Returns:
        The findings, empty when everything agrees.

    Raises:
        StoreError: a Chroma collection or the manifest could not be read.
    """
    started = time.monotonic()
    col, manifest = kb.collection, kb.manifest
    findings: list[Finding] = []
    notes: list[str] = []
    plan = RepairPlan()
    expect: dict[str, tuple[int, int]] = {}  # settled documents -> (n_clip, n_text)
    pending: list[str] = []
    for s in manifest.all(col):
        if s.status == "pending":
            pending.append(s.doc_id)
        else:
            expect[s.doc_id] = (s.n_clip, s.n_text)
    want = manifest.totals(col)

    # Each physical collection on its own (the CLIP space is a text and an image collection).
    halves = [(part.name, part, space) for space, which in enumerate(("clip", "text"))
              for part in kb.bare_store(which).parts()]
    have: list[dict[str, int]] = [{}, {}]  # per space (clip, text): doc id -> records
    store_counts: dict[str, int] = {}
    for name, store, space in halves:
        store_counts[name] = _scan(store, (name, space), have[space], expect, set(pending), plan, findings, examples)

    keyword_rows: dict[str, int] | None = None
    try:
        keyword_rows = kb.keyword.doc_counts()
        store_counts["keyword"] = sum(keyword_rows.values())
    except StoreError as exc:
        plan.keyword_damaged = str(exc)
    findings[:0] = _count_findings(want, store_counts, kb, halves)
    _missing(expect, have, plan, findings, kb, examples)
    plan.redo.update(pending)
    _keyword(keyword_rows, expect, have[1], plan, findings, examples)
    _identity(kb, halves, plan, findings, notes)
    if pending:
        findings.append(Finding(
            "pending", "manifest", len(pending), f"{len(pending)} document(s) are pending (an interrupted run)",
            "--repair ingests them again from their sources (or rerun `mmrag ingest` on the same paths)", True,
            tuple(pending[:examples])))
    findings.extend(_probes(kb, probes, plan, notes, examples))
    return DoctorReport(col, _label(kb), findings, {"expected": {"clip": want[0], "text": want[1]},
                                                    "stores": store_counts}, notes, time.monotonic() - started, plan)


def _label(kb: KnowledgeBase) -> str:
    return Versions(kb.manifest).label_of(kb.collection)


def _scan(store: Any, where: tuple[str, int], counts: dict[str, int], expect: dict[str, tuple[int, int]],
          pending: set[str], plan: RepairPlan, findings: list[Finding], examples: int) -> int:
    """Count one collection's records per document (ids and metadata only); note records nobody counts.

    A pending document's records are its interrupted write, not orphans: the redo replaces them.
    """
    name, space = where
    unknown: dict[str, str] = {}  # doc id -> an example record id
    loose: list[str] = []
    total = 0
    for rid, meta, _ in store.iter_all(include=("metadatas",)):
        total += 1
        doc = meta.get("doc_id")
        if not isinstance(doc, str) or not doc:
            loose.append(rid)
            continue
        counts[doc] = counts.get(doc, 0) + 1
        if (doc not in expect or expect[doc][space] == 0) and doc not in pending:
            unknown.setdefault(doc, rid)
    if unknown or loose:
        plan.orphans[name] = set(unknown)
        plan.loose[name] = loose
        sample = [*list(unknown.values())[:examples], *loose[: max(0, examples - len(unknown))]]
        findings.append(Finding(
            "orphan_records", name, len(unknown) + len(loose),
            f"{sum(counts[d] for d in unknown) + len(loose)} record(s) of {len(unknown)} document(s) the manifest "
            f"does not count{f', and {len(loose)} with no doc_id' if loose else ''}",
            "--repair deletes them (from the keyword index too)", True, tuple(sample)))
    return total


def _count_findings(want: tuple[int, int], counts: dict[str, int], kb: KnowledgeBase,
                    halves: list[tuple[str, Any, int]]) -> list[Finding]:
    clip = sum(counts[n] for n, _, space in halves if space == 0)
    out = []
    for where, got, expected in ((f"{kb.clip_name} + {kb.image_name}", clip, want[0]),
                                 (kb.text_name, counts[kb.text_name], want[1]),
                                 ("keyword", counts.get("keyword"), want[1])):
        if got is not None and got != expected:
            out.append(Finding("count_mismatch", where, abs(got - expected),
                               f"holds {got} records but the manifest counts {expected}",
                               "explained by the findings below; --repair fixes those", True))
    return out


def _missing(expect: dict[str, tuple[int, int]], have: list[dict[str, int]], plan: RepairPlan, findings: list[Finding],
             kb: KnowledgeBase, examples: int) -> None:
    for space, name in ((0, f"{kb.clip_name} + {kb.image_name}"), (1, kb.text_name)):
        short, extra = [], []
        for doc, n in expect.items():
            got = have[space].get(doc, 0)
            if got < n[space]:
                short.append(doc)
            elif got > n[space] > 0:
                extra.append(doc)
        if short:
            findings.append(Finding(
                "missing_records", name, len(short),
                f"{len(short)} settled document(s) hold fewer records than the manifest counts",
                "--repair ingests them again from their sources (their records are rewritten)", True,
                tuple(f"{d} ({have[space].get(d, 0)} of {expect[d][space]})" for d in short[:examples])))
        if extra:
            findings.append(Finding(
                "orphan_records", name, len(extra), f"{len(extra)} document(s) hold more records than the manifest "
                "counts", "--repair ingests them again from their sources (their records are rewritten)", True,
                tuple(f"{d} ({have[space][d]} of {expect[d][space]})" for d in extra[:examples])))
        plan.redo.update(short, extra)


def _keyword(rows: dict[str, int] | None, expect: dict[str, tuple[int, int]], text: dict[str, int], plan: RepairPlan,
             findings: list[Finding], examples: int) -> None:
    if rows is None:
        findings.append(Finding("stale_keyword", "keyword", 0, f"the keyword index cannot be read: "
                                f"{plan.keyword_damaged}", "--repair rebuilds it from the text collection", True))
        return
    # Against the text collection where it agrees with the manifest; a document being redone gets
    # its keyword rows rewritten by the redo, and an orphan's rows go with it.
    want = {d: expect[d][1] if d in expect else 0 for d in set(rows) | set(text) if d not in plan.redo}
    stale = sorted(d for d, n in want.items() if rows.get(d, 0) != n)
    if stale:
        plan.keyword_rewrite.update(stale)
        short = sum(1 for d in stale if rows.get(d, 0) < want[d])
        findings.append(Finding(
            "stale_keyword", "keyword", len(stale),
            f"{len(stale)} document(s) have keyword rows that disagree with the text collection "
            f"({short} with rows missing, {len(stale) - short} with rows it does not hold)",
            "--repair rewrites their rows from the text collection (no embedding)", True,
            tuple(f"{d} ({rows.get(d, 0)} rows vs {want[d]})" for d in stale[:examples])))


def _identity(kb: KnowledgeBase, halves: list[tuple[str, Any, int]], plan: RepairPlan, findings: list[Finding],
              notes: list[str]) -> None:
    configured: list[dict[str, Any] | None] = []
    for which in ("clip", "text"):
        try:
            configured.append(dict(getattr(kb, which).identity()))
        except (ConfigError, MissingDependencyError) as exc:
            configured.append(None)
            notes.append(f"identity of the {which} collection not checked: the configured model did not load ({exc})")
    for name, store, space in halves:
        stored, wanted = dict(store.identity or {}), configured[space]
        if not stored or wanted is None:
            continue  # an empty collection has no identity yet
        diff = {k: (stored[k], wanted.get(k)) for k in ENFORCED_IDENTITY if k in stored and stored[k] != wanted.get(k)}
        if diff:
            plan.identity_ok = False
            detail = ", ".join(f"{k}: built with {a!r}, configured {b!r}" for k, (a, b) in diff.items())
            kb_name = split_label(_label(kb))[0]
            findings.append(Finding(
                "identity_mismatch", name, 1, f"built with another embedding model ({detail})",
                "not repairable in place: run with the models it was built with (--profile, --clip-model, "
                f"--clip-pretrained, --text-model), or build a version with the configured ones (`mmrag reindex "
                f"{kb_name}`), or `mmrag reset` and `mmrag ingest` again", False))


def _probes(kb: KnowledgeBase, probes: Sequence[Probe] | None, plan: RepairPlan, notes: list[str],
            examples: int) -> list[Finding]:
    if probes is None:
        probes = ProbeStore(kb.manifest).list(split_label(_label(kb))[0])
    if not probes:
        return []
    if not plan.identity_ok:
        notes.append("probes not run: the collection was built with another embedding model")
        return []
    result = run_probes(kb, probes)
    if result.passed:
        return []
    failing = result.failed
    detail = [f"{r.name} (missing {', '.join(r.missing)})" if not r.error else f"{r.name} ({r.error})"
              for r in result.results if not r.passed]
    return [Finding("probe_failing", "probes", len(failing), f"{len(failing)} of {len(probes)} probe(s) miss documents "
                    f"they expect (mean recall {result.recall:.3f})", "not repairable by the doctor: fix the findings "
                    "above first (missing records lose recall), then inspect the probes with `mmrag probes run`",
                    False, tuple(detail[:examples]))]


# -- repairing ---------------------------------------------------------------------------------
def repair(kb: KnowledgeBase, report: DoctorReport, *, indexer: Indexer | None = None,
           probes: Sequence[Probe] | None = None, allow_outside_roots: bool = False,
           storage_options: Mapping[str, Any] | None = None) -> RepairReport:
    """Fix what ``report`` found that the manifest and the sources can fix, then examine again.

    Under the collection's writer lock: orphan records are deleted from Chroma and the keyword
    index; stale keyword rows are rewritten from the text collection (an unreadable index is
    rebuilt from it); documents with missing or surplus records, and pending ones, are set
    ``pending`` and ingested again from their sources. A document whose source is gone is listed
    as unrepairable with its path. An identity mismatch is not repaired (and no document is
    re-ingested into a collection of another model).

    Only the affected files are ingested again, each with the doc id it had (a path relative to
    the folder it was ingested under), so nothing else in those folders is touched. A source
    outside the roots the collection was ingested from (a row restored from a snapshot can name
    any file) is not read: it is listed as unrepairable (see :mod:`mmrag.lifecycle.roots`).

    The work itself is :func:`mmrag.indexing.repair.apply`, the repair every ingest runs too; this function
    only adds the examination's plan, the roots check and the re-ingest of the affected files.

    Args:
        kb: the collection ``report`` examined.
        report: from :func:`examine`, preferably taken under the same writer lock.
        indexer: the indexer to ingest with (for JSONL field names or loader limits other than the
            defaults); default ``Indexer(kb)``.
        probes: as for :func:`examine`, for the examination after the repair.
        allow_outside_roots: read sources outside the collection's roots too.
        storage_options: how to read sources in object storage (:func:`mmrag.sources.storage_options`).

    Returns:
        What was done, what was not, and the examination after it.
    """
    col, indexer = kb.collection, indexer or Indexer(kb)

    def refuse(sources: list[str]) -> dict[str, str]:
        outside = outside_roots(kb.manifest, col, sources, allow_outside=allow_outside_roots)
        return {s: roots_reason(kb.manifest, col) for s in outside}

    with kb.write_lock():
        kb.check_writable()
        out = apply(kb, report.plan, reingest=lambda refs: indexer.ingest([], files=refs).to_dict(),
                    refuse_sources=refuse, reason="redo: mmrag doctor", storage_options=storage_options)
        out.after = examine(kb, probes=probes)
    return out
