"""Serve-time probing: ``mmrag serve`` runs every knowledge base's probes against its live version.

A :class:`ProbeMonitor` thread waits for the models, runs a first round at once (so a fresh server
reports recall within seconds, not after a whole interval), then one round every
``lifecycle.probe_interval_minutes`` (0: never). Each round resolves every knowledge base that has
probes to its live version, so a promote or rollback is followed on the next round. The last result
per (knowledge base, version label) feeds ``/metrics`` and ``GET /v1/collections/{c}/probes``; a
probe that goes from passing to failing is logged as a WARNING, and its recovery as INFO.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmrag.errors import MmragError
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.probes import ProbeReport, ProbeStore, record_probe_run, run_probes
from mmrag.lifecycle.versions import Versions
from mmrag.retrieval import Searcher

if TYPE_CHECKING:
    from mmrag.http.services import Services

log = logging.getLogger("mmrag.probes")


@dataclass(frozen=True)
class ProbeRun:
    """The last probe round of one version."""

    collection: str  # the knowledge base (alias) name
    version: str  # its label, ``kb@N``
    physical: str
    report: ProbeReport


class ProbeMonitor:
    """The background thread of serve-time probing.

    Args:
        services: the server's services (models, searchers).
        interval_s: seconds between rounds; 0 or less disables the thread (:meth:`run_once` still works).
    """

    def __init__(self, services: "Services", interval_s: float) -> None:
        self.services = services
        self.interval_s = interval_s
        # A knowledge base with no models attached: only its manifest is used (no store is opened).
        bare = KnowledgeBase(services.data_dir, services.settings.collection, services.models)
        self.store = ProbeStore(bare.manifest)
        self.versions = Versions(bare.manifest)
        self._last: dict[tuple[str, str], ProbeRun] = {}
        #: (kb, probe) -> whether it passed last time, on whichever version was live then.
        self._passing: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def start_for(cls, services: "Services") -> "ProbeMonitor":
        """A monitor with the server's interval, its thread started unless the interval is 0."""
        monitor = cls(services, services.settings.lifecycle.probe_interval_minutes * 60)
        monitor.start()
        return monitor

    def start(self) -> None:
        """Start the thread (idempotent; nothing with an interval of 0)."""
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="mmrag-probes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; a round in progress finishes its current probe first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.store.manifest.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.services.settled.wait(1.0):
                break
        while not self._stop.is_set():
            if self.services.ready.is_set():  # a server whose models failed to load has nothing to probe with
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001 - one bad round must not end serve-time probing for good
                    log.exception("probe round failed unexpectedly; retrying in %.0f s", self.interval_s)
            self._stop.wait(self.interval_s)

    def run_once(self) -> list[ProbeRun]:
        """One round: every knowledge base's probes on its live version (errors are logged, not raised)."""
        runs = []
        for kb in self.store.knowledge_bases():
            try:
                run = self._probe(kb)
            except MmragError as exc:
                log.warning("probes of %r could not run: %s", kb, exc)
                continue
            if run is not None:
                runs.append(run)
        return runs

    def _probe(self, kb_name: str) -> ProbeRun | None:
        probes = self.store.list(kb_name)
        physical = self.versions.resolve(kb_name)
        if not probes or not self.versions.manifest.has_collection(physical):
            return None  # probes of a knowledge base not built (or dropped): nothing to measure
        label = self.versions.label_of(physical)
        # A searcher of its own, with the server's fusion settings: the shared one feeds the query
        # drift log, and probe queries are not users' queries.
        searcher = Searcher.from_settings(self.services.kb(label), self.services.settings.retrieval)
        report = run_probes(searcher, probes)
        record_probe_run(self.versions.manifest, physical, report)
        run = ProbeRun(kb_name, label, physical, report)
        with self._lock:
            # A version that is no longer live is never probed again: drop its figures rather than
            # export them, frozen, next to the live version's.
            for key in [key for key in self._last if key[0] == kb_name and key[1] != label]:
                del self._last[key]
            self._last[(kb_name, label)] = run
            for result in report.results:
                was = self._passing.get((kb_name, result.name))
                self._passing[(kb_name, result.name)] = result.passed
                why = result.error or f"missing {', '.join(result.missing)}"
                if was and not result.passed:
                    log.warning("probe %s of %s started failing: %s (recall %.2f)", result.name, label, why,
                                result.recall)
                elif was is False and result.passed:
                    log.info("probe %s of %s passes again", result.name, label)
                elif was is None and not result.passed:
                    log.warning("probe %s of %s fails: %s (recall %.2f)", result.name, label, why, result.recall)
        return run

    def last(self, kb_name: str | None = None) -> list[ProbeRun]:
        """The last round of each (knowledge base, version), optionally of one knowledge base only."""
        with self._lock:
            runs = list(self._last.values())
        return [r for r in runs if kb_name is None or r.collection == kb_name]
