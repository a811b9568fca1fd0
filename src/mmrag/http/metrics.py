"""Prometheus metrics of one server process (``GET /metrics``).

Each app gets its own :class:`~prometheus_client.CollectorRegistry` rather than the global one, so
several apps in one process (tests, embedding the app) never clash. With several workers each
process reports its own numbers: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before starting
and the workers' counters and histograms are merged (prometheus_client's multiprocess mode); index
sizes are read from the shared store either way.

The gauges read the server's state through callables handed in by whoever builds the metrics (the
server's ``Services``), so this module knows nothing of how knowledge bases are opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

#: Records per collection and index: ``{collection: {index: count}}``.
IndexSizes = Callable[[], Mapping[str, Mapping[str, int]]]
#: Every version to score for drift: ``(knowledge base opened without models, "name@version")``.
DriftVersions = Callable[[], Iterable[tuple[Any, str]]]
#: The last probe round of each live version (:meth:`mmrag.http.probing.ProbeMonitor.last`).
ProbeRuns = Callable[[], Iterable[Any]]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The server's counters and histograms, and gauges read at scrape time.

    Args:
        data_dir: the data dir (the query log of the drift gauge lives there).
        index_sizes: records per collection and index.
        drift_versions: the versions the drift gauge scores.
        probe_runs: the last probe rounds.
        drift_recent: recent vectors per version the drift score reads.
        drift_threshold: drift score above which a version counts as drifted.
    """

    def __init__(self, data_dir: Path, *, index_sizes: IndexSizes, drift_versions: DriftVersions,
                 probe_runs: ProbeRuns, drift_recent: int, drift_threshold: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry, path=multiproc)
            registry = None  # in multiprocess mode, metrics live in files, not in a registry
        else:
            registry = self.registry
        self.requests = Counter("mmrag_http_requests_total", "HTTP requests by route, method and status.",
                                ["method", "route", "status"], registry=registry)
        self.request_seconds = Histogram("mmrag_http_request_seconds", "HTTP request latency.",
                                         ["method", "route"], buckets=_LATENCY, registry=registry)
        self.retrieval_seconds = Histogram("mmrag_retrieval_seconds", "Retrieval latency (no LLM).",
                                           ["retriever"], buckets=_LATENCY, registry=registry)
        self.llm_seconds = Histogram("mmrag_llm_seconds", "LLM call latency (whole reply).", ["model"],
                                     buckets=_LATENCY, registry=registry)
        self.llm_tokens = Counter("mmrag_llm_tokens_total", "LLM tokens.", ["model", "kind"], registry=registry)
        self.llm_cost = Counter("mmrag_llm_cost_usd_total", "LLM cost where the provider has a price.", ["model"],
                                registry=registry)
        self.errors = Counter("mmrag_errors_total", "Error responses by error code.", ["code"], registry=registry)
        self.ingested = Counter("mmrag_ingested_documents_total", "Documents indexed through the API.",
                                ["collection"], registry=registry)
        self.registry.register(_IndexSizes(index_sizes))
        from mmrag.lifecycle.drift import QueryLog

        #: Recent query vectors per collection (the search route records them; drift reads them).
        self.queries = QueryLog(data_dir)
        self.drift = _DriftScores(drift_versions, self.queries, drift_recent, drift_threshold)
        self.registry.register(self.drift)
        self.registry.register(_ProbeFigures(probe_runs))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def record_usage(self, model: str, usage: Any, seconds: float) -> None:
        """Count one LLM call."""
        self.llm_seconds.labels(model).observe(seconds)
        self.llm_tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self.llm_tokens.labels(model, "completion").inc(usage.completion_tokens)
        if usage.cost_usd:
            self.llm_cost.labels(model).inc(usage.cost_usd)


class _IndexSizes:
    """Index sizes, read at scrape time from the collections this process has opened."""

    def __init__(self, sizes: IndexSizes) -> None:
        self.sizes = sizes

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mmrag_index_records", "Records per collection and index.",
                                   labels=["collection", "index"])
        for name, sizes in self.sizes().items():
            for index, n in sizes.items():
                family.add_metric([name, index], n)
        yield family


class _ProbeFigures:
    """The last serve-time probe round of each knowledge base's live version (:mod:`mmrag.http.probing`)."""

    def __init__(self, runs: ProbeRuns) -> None:
        self.runs = runs

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["collection", "version"]
        recall = GaugeMetricFamily("mmrag_probe_recall", "Mean probe recall of the last probe round "
                                   "(share of expected documents found in each probe's top k).", labels=labels)
        failing = GaugeMetricFamily("mmrag_probe_failing", "Probes that failed in the last round.", labels=labels)
        latency = GaugeMetricFamily("mmrag_probe_latency_seconds", "Median probe search latency of the last round.",
                                    labels=labels)
        worst = GaugeMetricFamily("mmrag_probe_latency_max_seconds", "Slowest probe search of the last round.",
                                  labels=labels)
        at = GaugeMetricFamily("mmrag_probe_last_run_timestamp_seconds", "When the last probe round ran.",
                               labels=labels)
        for run in self.runs():
            key, report = [run.collection, run.version], run.report
            if report.recall is not None:
                recall.add_metric(key, report.recall)
            failing.add_metric(key, len(report.failed))
            latency.add_metric(key, report.p50_latency_s)
            worst.add_metric(key, report.max_latency_s)
            at.add_metric(key, report.at)
        yield from (recall, failing, latency, worst, at)


class _DriftScores:
    """Drift of every version against its reference (:mod:`mmrag.lifecycle.drift`), cached.

    Scores are recomputed in a background thread at most once a minute (each reads a few thousand
    vectors per version), so a scrape only reads the last figures; the first scrape after start
    may have none yet.
    """

    def __init__(self, versions: DriftVersions, queries: Any, recent: int, threshold: float) -> None:
        from mmrag.lifecycle.drift import ScoreCache

        self.versions, self.queries = versions, queries
        self.recent, self.threshold = recent, threshold
        self.cache = ScoreCache(self._compute, every=60.0)

    def describe(self) -> list[Any]:
        return []

    def _compute(self) -> dict[str, Any]:
        from mmrag.lifecycle.drift import score_all

        return score_all(self.versions(), recent=self.recent, threshold=self.threshold, queries=self.queries)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["collection", "version", "modality"]
        docs = GaugeMetricFamily("mmrag_drift_score", "Drift of the most recent documents' vectors from the version's "
                                 "reference (0 same distribution, 1 disjoint; see mmrag.lifecycle.drift).", labels=labels)
        asked = GaugeMetricFamily("mmrag_query_drift_score", "Drift of the recent queries' vectors from the "
                                  "version's document reference.", labels=labels)
        threshold = GaugeMetricFamily("mmrag_drift_threshold", "Drift score above which a version counts as drifted.")
        threshold.add_metric([], self.threshold)
        for report in self.cache.current().values():
            kb = report.label.rsplit("@", 1)[0]
            for family, scores in ((docs, report.documents), (asked, report.queries)):
                for modality, entry in scores.items():
                    if entry.score is not None:
                        family.add_metric([kb, report.label, modality], entry.score)
        yield from (docs, asked, threshold)
