"""Prometheus metrics of one server process (``GET /metrics``).

Each app gets its own :class:`~prometheus_client.CollectorRegistry` rather than the global one, so
several apps in one process (tests, embedding the app) never clash. With several workers each
process reports its own numbers: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before starting
and the workers' counters and histograms are merged (prometheus_client's multiprocess mode); index
sizes are read from the shared store either way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from mmrag.http.services import Services

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The server's counters and histograms."""

    def __init__(self, services: "Services") -> None:
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
        self.registry.register(_IndexSizes(services))

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

    def __init__(self, services: "Services") -> None:
        self.services = services

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mmrag_index_records", "Records per collection and index.",
                                   labels=["collection", "index"])
        for name, sizes in self.services.index_sizes().items():
            for index, n in sizes.items():
                family.add_metric([name, index], n)
        yield family
