"""Probes: synthetic queries with the documents they must find, the recall SLIs of a knowledge base.

A probe is stored per knowledge base name (the alias ``kb``, not a version's physical collection),
so every version of ``kb`` is measured against the same probes: that is what lets the canary gate
(:mod:`mmrag.lifecycle.canary`) compare a candidate with the live version.

Scoring. A probe's recall is the share of its expected documents found among the top ``k``
distinct documents (each document's best hit, as ``mmrag eval`` ranks them). A probe *passes* only
at recall 1.0: every expected document is in the top ``k``. "Any one found" would hide a probe that
loses half of what it should find, and recall already says how much was lost; the report's
``recall`` is the mean over the probes.

Example:
    >>> store = ProbeStore(kb.manifest)                                              # doctest: +SKIP
    >>> store.add("docs", Probe("closing-time", "When does the building close?", ("visitor-faq.html",)))
    >>> report = run_probes(Searcher(kb), store.list("docs"))                       # doctest: +SKIP
    >>> report.recall, report.failed                                                 # doctest: +SKIP
    (1.0, [])
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mmrag.errors import InvalidInputError, MmragError, NotFoundError
from mmrag.manifest import Manifest
from mmrag.registry import check_collection_name

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase
    from mmrag.retrieval import Searcher

#: A probe's k: at most this many documents (a probe is a precise check, not a recall sweep).
MAX_K = 100
#: The retriever probes use unless told otherwise: the one ``mmrag ask`` and ``eval run`` use.
DEFAULT_RETRIEVER = "hybrid"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


@dataclass(frozen=True)
class Probe:
    """One synthetic query and the documents it must find.

    Args:
        name: unique per knowledge base (letters, digits, ``.``, ``_``, ``:``, ``-``; at most 100).
        query: the query text.
        expect: doc ids that must all be in the top ``k`` (at least one).
        k: how many distinct documents are looked at, 1 to 100.
        created_at: when it was added (seconds since the epoch).
    """

    name: str
    query: str
    expect: tuple[str, ...]
    k: int = 10
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "query": self.query, "expect": list(self.expect), "k": self.k,
                "created_at": self.created_at}


def check_probe(probe: Probe) -> Probe:
    """Validate a probe; returns it with its expected ids stripped and de-duplicated.

    Raises:
        InvalidInputError: the message names the field (``name``, ``query``, ``expect`` or ``k``).
    """
    if not isinstance(probe.name, str) or not _NAME.match(probe.name):
        raise InvalidInputError(f"probe name {probe.name!r} is invalid: use 1-100 letters, digits, '.', '_', ':' "
                                "or '-', starting with a letter or digit")
    if not isinstance(probe.query, str) or not probe.query.strip():
        raise InvalidInputError(f"probe {probe.name!r}: query must be non-empty text")
    expect = tuple(dict.fromkeys(str(d).strip() for d in probe.expect if str(d).strip()))
    if not expect:
        raise InvalidInputError(f"probe {probe.name!r}: expect needs at least one doc id (--expect DOC_ID)")
    if isinstance(probe.k, bool) or not isinstance(probe.k, int) or not 1 <= probe.k <= MAX_K:
        raise InvalidInputError(f"probe {probe.name!r}: k must be a whole number from 1 to {MAX_K}, got {probe.k!r}")
    if len(expect) > probe.k:
        raise InvalidInputError(f"probe {probe.name!r}: expects {len(expect)} documents but k is {probe.k}; "
                                "raise k or expect fewer")
    return Probe(probe.name, probe.query.strip(), expect, probe.k, probe.created_at)


def default_name(query: str, taken: Sequence[str] = ()) -> str:
    """A probe name made from its query (``"When does it close?"`` -> ``when-does-it-close``), not in ``taken``."""
    base = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:48].strip("-") or "probe"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


#: A probe row as a snapshot carries it (the ``kb`` column left out).
COLUMNS = ("name", "query", "expect", "k", "created_at")


class ProbeStore:
    """The probes of every knowledge base, in the manifest's ``probes`` table.

    Args:
        manifest: the data dir's manifest.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def add(self, kb_name: str, probe: Probe, *, replace: bool = False) -> Probe:
        """Validate and store a probe of knowledge base ``kb_name``.

        Args:
            kb_name: the knowledge base name (the alias; a label ``kb@N`` is folded to its name ``kb``).
            probe: the probe.
            replace: overwrite a probe of the same name instead of refusing.

        Returns:
            The stored probe (validated, with its creation time).

        Raises:
            InvalidInputError: the probe is invalid, or one of that name exists and ``replace`` is False.
        """
        kb_name = kb_name_of(kb_name)
        probe = check_probe(probe)
        stored = Probe(probe.name, probe.query, probe.expect, probe.k, time.time())
        row = (kb_name, stored.name, stored.query, json.dumps(list(stored.expect)), stored.k, stored.created_at)
        with self.manifest.transaction() as db:
            if not replace and db.execute("SELECT 1 FROM probes WHERE kb=? AND name=?", (kb_name, probe.name)).fetchone():
                raise InvalidInputError(f"{kb_name!r} already has a probe named {probe.name!r}; pick another --name, "
                                        "or replace it (--replace)")
            db.execute("INSERT OR REPLACE INTO probes VALUES (?,?,?,?,?,?)", row)
        return stored

    def remove(self, kb_name: str, name: str) -> None:
        """Delete probe ``name`` of ``kb_name``.

        Raises:
            NotFoundError: there is no such probe.
        """
        kb_name = kb_name_of(kb_name)
        with self.manifest.transaction() as db:
            gone = db.execute("DELETE FROM probes WHERE kb=? AND name=?", (kb_name, name)).rowcount
        if not gone:
            raise NotFoundError(f"{kb_name!r} has no probe named {name!r}; `mmrag probes list {kb_name}` lists them")

    def list(self, kb_name: str) -> list[Probe]:
        """The probes of ``kb_name``, by name."""
        rows = self.manifest.read("SELECT name, query, expect, k, created_at FROM probes WHERE kb=? ORDER BY name",
                                  (kb_name_of(kb_name),))
        return [Probe(str(n), str(q), tuple(json.loads(str(e))), int(k), float(t))  # type: ignore[call-overload]
                for n, q, e, k, t in rows]

    def rows(self, kb_name: str) -> list[dict[str, Any]]:
        """``kb_name``'s probe rows as stored (``expect`` as its JSON text), by name: what a snapshot copies."""
        rows = self.manifest.read(f"SELECT {', '.join(COLUMNS)} FROM probes WHERE kb=? ORDER BY name", (kb_name_of(kb_name),))
        return [dict(zip(COLUMNS, r)) for r in rows]

    def exists(self, kb_name: str) -> bool:
        """Whether ``kb_name`` has any probe."""
        return bool(self.manifest.read("SELECT 1 FROM probes WHERE kb=? LIMIT 1", (kb_name_of(kb_name),)))

    def remove_all(self, kb_name: str, db: sqlite3.Connection | None = None) -> None:
        """Delete every probe of ``kb_name`` (a dropped knowledge base; a failed restore's undo).

        Args:
            kb_name: the knowledge base's name.
            db: the caller's open transaction, to delete atomically with other owners' rows.
        """
        if db is None:
            self.manifest.write("DELETE FROM probes WHERE kb=?", [(kb_name_of(kb_name),)])
        else:
            db.execute("DELETE FROM probes WHERE kb=?", (kb_name_of(kb_name),))

    @staticmethod
    def insert(db: sqlite3.Connection, kb_name: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Add rows of :data:`COLUMNS` to ``kb_name`` inside the caller's transaction (a restore)."""
        db.executemany("INSERT INTO probes VALUES (?,?,?,?,?,?)", ((kb_name, *row) for row in rows))

    def knowledge_bases(self) -> list[str]:
        """Knowledge bases that have at least one probe."""
        return [str(r[0]) for r in self.manifest.read("SELECT DISTINCT kb FROM probes ORDER BY 1", ())]


def kb_name_of(name: str) -> str:
    from mmrag.lifecycle.versions import split_label

    return check_collection_name(split_label(name)[0])


# -- running ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome on one version."""

    name: str
    recall: float
    found: tuple[str, ...]
    missing: tuple[str, ...]
    latency_s: float
    #: Why the search itself failed (the probe then counts as recall 0).
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Every expected document was in the top k."""
        return self.error is None and not self.missing

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "passed": self.passed, "recall": self.recall, "found": list(self.found),
                "missing": list(self.missing), "latency_ms": round(self.latency_s * 1000, 3), "error": self.error}


@dataclass(frozen=True)
class ProbeReport:
    """The probes of one run: per-probe results, mean recall, latency.

    ``recall`` is None when there were no probes (nothing was measured, which is not a recall of 0).
    """

    results: tuple[ProbeResult, ...]
    recall: float | None
    p50_latency_s: float
    max_latency_s: float
    at: float = field(default_factory=time.time)

    @property
    def failed(self) -> list[str]:
        """Names of the probes that did not pass."""
        return [r.name for r in self.results if not r.passed]

    @property
    def passed(self) -> bool:
        """Every probe passed (vacuously true with no probes)."""
        return not self.failed

    def result(self, name: str) -> ProbeResult | None:
        """The result of probe ``name``, if it ran."""
        return next((r for r in self.results if r.name == name), None)

    def figures(self) -> dict[str, Any]:
        """The summary :meth:`Versions.record_figures` stores (``mmrag versions`` shows it)."""
        return {"recall": self.recall, "probes": len(self.results), "failed": self.failed,
                "p50_latency_ms": round(self.p50_latency_s * 1000, 3),
                "max_latency_ms": round(self.max_latency_s * 1000, 3)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the figures plus every probe's result."""
        return {**self.figures(), "at": self.at, "results": [r.to_dict() for r in self.results]}


def run_probes(searcher: "Searcher | KnowledgeBase", probes: Sequence[Probe], *,
               retriever: str = DEFAULT_RETRIEVER) -> ProbeReport:
    """Run every probe against one version and score it.

    A search that fails (a store down, a bad filter) makes that probe fail with its ``error`` set;
    the other probes still run, so one broken probe cannot hide the rest.

    Args:
        searcher: a :class:`~mmrag.retrieval.Searcher` over the version, or its
            :class:`~mmrag.kb.KnowledgeBase` (searched with the default fusion settings).
        probes: the probes (:meth:`ProbeStore.list`).
        retriever: ``clip``, ``text``, ``bm25`` or ``hybrid``.

    Returns:
        The report; its ``failed`` names the probes that did not find all their documents.
    """
    from mmrag.retrieval import Searcher
    from mmrag.types import Query

    if not isinstance(searcher, Searcher):
        searcher = Searcher(searcher)
    results = []
    for probe in probes:
        started = time.perf_counter()
        error, ranked = None, []
        try:
            hits = searcher.search_documents(Query(text=probe.query), probe.k, retriever=retriever)
            ranked = [h.doc_id for h in hits[: probe.k]]
        except MmragError as exc:
            error = f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - started
        found = tuple(d for d in probe.expect if d in ranked)
        missing = tuple(d for d in probe.expect if d not in ranked)
        results.append(ProbeResult(probe.name, len(found) / len(probe.expect), found, missing, latency, error))
    latencies = [r.latency_s for r in results]
    return ProbeReport(tuple(results), statistics.fmean(r.recall for r in results) if results else None,
                       statistics.median(latencies) if latencies else 0.0, max(latencies, default=0.0))


def record_probe_run(manifest: Manifest, physical: str, report: ProbeReport) -> None:
    """Store a run's figures on its version (``Versions.record_figures(physical, "probes", ...)``)."""
    from mmrag.lifecycle.versions import Versions

    Versions(manifest).record_figures(physical, "probes", report.figures())
