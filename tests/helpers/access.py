"""Labelled knowledge bases for the access tests: random documents with random labels, ingested
through the real indexer into real Chroma and tantivy (the hashing embedders stand in for the models:
the access paths never read a vector's meaning)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from mmrag.security.labels import Caller

VOCAB = ["harbour", "ledger", "orchid", "granite", "violin", "meadow", "copper", "lantern", "quarry", "sable"]


def random_labels(rng: random.Random) -> list[str]:
    roll = rng.random()
    if roll < 0.02:
        return ["group:c"]  # about 1% of the records: the small share
    if roll < 0.10:
        return []  # unlabelled
    labels = ["group:a"] if roll < 0.70 else ["group:b"]
    if rng.random() < 0.1:
        labels.append("user:ann")
    return labels


def ingest_labelled(root: Path, n: int, seed: int) -> KnowledgeBase:
    """``n`` one-line JSONL documents with random labels (about 1% ``group:c``, 10% unlabelled), ingested."""
    rng = random.Random(seed)
    rows = [{"_id": f"d{i:03d}", "text": " ".join(rng.choices(VOCAB, k=6)), "access": ",".join(random_labels(rng))}
            for i in range(n)]
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kb = KnowledgeBase(root / "kb", "plan", resolve_models(Settings()), clip=HashingEmbedder(16),
                       text=HashingEmbedder(8))
    summary = Indexer(kb).ingest([root / "corpus"])
    assert summary.indexed == n and not summary.failed
    return kb


CALLERS = [Caller.of(["a"]), Caller.of(["b"]), Caller.of(["c"]), Caller.of([], "ann"), Caller.of(["a", "b"]),
           Caller.of(["c"], "ann"), Caller.of(["b", "c"])]


def label_table(kb: KnowledgeBase) -> dict[str, tuple[str, ...]]:
    """The manifest's labels of each labelled document."""
    from mmrag.security.rules import LabelTable

    return LabelTable(kb.manifest).labelled(kb.collection)
