"""What an ingest run reports (:class:`IngestSummary`, :class:`Problem`) and what it has seen so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmrag.redaction import counts_of


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
    #: Store requests retried after a transient failure.
    retries: int = 0
    engine: str = "local"
    #: The engine's workers: ``embed`` actors, and the ``cpus``/``gpus`` it ran on.
    workers: dict[str, float] = field(default_factory=dict)
    #: Seconds the engine took to start (Ray's start-up), included in ``seconds``.
    startup_seconds: float = 0.0
    #: Seconds spent writing: ``chroma`` (deletes and writes, summed over concurrent batches) and
    #: ``keyword`` (tantivy commits and manifest rows), so a run shows whether it waited on the stores.
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: The collection's redaction policy (:mod:`mmrag.redaction`); empty: nothing is scrubbed.
    redact: tuple[str, ...] = ()

    @property
    def redactions(self) -> dict[str, int]:
        """Values replaced in the documents indexed by this run, by kind (every kind of the policy)."""
        return {**{k: 0 for k in self.redact}, **counts_of(self.stats)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "collection": self.collection, "files_seen": self.files_seen, "indexed": self.indexed,
            "unchanged": self.unchanged, "pruned": self.pruned, "repaired": self.repaired,
            "embeddings": {"clip": self.clip_embeddings, "text": self.text_embeddings},
            "failed": [p.__dict__ for p in self.failed], "skipped": [p.__dict__ for p in self.skipped],
            "warnings": self.warnings, "stats": {k: round(v, 3) for k, v in self.stats.items()},
            "retries": self.retries, "engine": self.engine, "workers": self.workers,
            "startup_seconds": round(self.startup_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()}, "seconds": round(self.seconds, 3),
            "redact": list(self.redact), "redactions": self.redactions,
        }


@dataclass
class RunState:
    """What one ingest run has seen, for id collisions and for a prune that deletes only what is gone."""

    seen: dict[str, str] = field(default_factory=dict)  # doc id -> the source that claimed it
    unsure: set[str] = field(default_factory=set)  # sources that exist but did not load completely
    stamps: list[tuple[str, int, int, str]] = field(default_factory=list)  # file stamps to record
