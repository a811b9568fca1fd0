"""Ingestion: files -> documents -> chunks -> embeddings -> the knowledge base's three indexes.

- :mod:`~mmrag.indexing.driver`: the :class:`Indexer`, which alone reads and writes the manifest and the stores;
- :mod:`~mmrag.indexing.steps`: the per-file steps (load, chunk, embed) every engine runs;
- :mod:`~mmrag.indexing.engines`: where they run (:class:`LocalEngine`); :mod:`~mmrag.indexing.ray` on Ray Data;
- :mod:`~mmrag.indexing.writer`: the batched, crash-safe writes; :mod:`~mmrag.indexing.summary`: what a run reports;
- :mod:`~mmrag.indexing.repair`: the one repair that makes the stores agree with the manifest.
"""

from mmrag.indexing.driver import WRITE_CONCURRENCY, Indexer, ingest_limits
from mmrag.indexing.engines import FLUSH_ITEMS, Engine, LocalEngine
from mmrag.indexing.summary import IngestSummary, Problem
from mmrag.indexing.writer import LOCK_SLICE, STORE_RETRIES, retry_store

__all__ = ["FLUSH_ITEMS", "LOCK_SLICE", "STORE_RETRIES", "WRITE_CONCURRENCY", "Engine", "IngestSummary", "Indexer",
           "LocalEngine", "Problem", "ingest_limits", "retry_store"]
