"""KnowledgeBase: one named collection's indexes, manifest and models, opened lazily.

Opening is cheap; models load on first use, so ``status``, ``delete`` and BM25 search never pay
for loading CLIP.
"""

from __future__ import annotations

import contextlib
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from mmrag.chunking import ChunkSpec
from mmrag.embedders.openclip import OpenClipEmbedder
from mmrag.embedders.sentence import SentenceTransformerEmbedder
from mmrag.keyword import KeywordIndex
from mmrag.manifest import Manifest
from mmrag.registry import ModelChoice, check_collection_name
from mmrag.stores.chroma import ChromaStore, delete_collection, open_client


class KnowledgeBase:
    """The three indexes of one collection (joint CLIP, text model, BM25) plus its manifest.

    Args:
        data_dir: where the manifest, keyword index and (embedded) Chroma live.
        collection: the knowledge base's name.
        models: which models to embed with.
        store_url: a Chroma server URL; ``None`` for the embedded store under ``data_dir``.
        chunk: chunk sizing.
        clip: an already-built CLIP embedder (tests, benchmarks); else built from ``models``.
        text: likewise for the text embedder.
    """

    def __init__(self, data_dir: Path, collection: str, models: ModelChoice, *, store_url: str | None = None,
                 chunk: ChunkSpec = ChunkSpec(), clip: Any = None, text: Any = None) -> None:
        self.data_dir = Path(data_dir)
        self.collection = check_collection_name(collection)
        self.models = models
        self.store_url = store_url
        self.chunk_spec = chunk
        if clip is not None:
            self.__dict__["clip"] = clip
        if text is not None:
            self.__dict__["text"] = text

    # -- models ---------------------------------------------------------------------------------
    @cached_property
    def clip(self) -> OpenClipEmbedder:
        """The joint text/image embedder."""
        return OpenClipEmbedder(self.models.clip)

    @cached_property
    def text(self) -> SentenceTransformerEmbedder:
        """The prose embedder."""
        return SentenceTransformerEmbedder(self.models.text_model)

    # -- stores ---------------------------------------------------------------------------------
    @cached_property
    def client(self) -> Any:
        """The Chroma client."""
        return open_client(self.data_dir, self.store_url)

    @property
    def clip_name(self) -> str:
        """Chroma collection of the joint space."""
        return f"{self.collection}-clip"

    @property
    def text_name(self) -> str:
        """Chroma collection of the text model."""
        return f"{self.collection}-text"

    @cached_property
    def clip_store(self) -> ChromaStore:
        """Joint-space collection, identity-checked against the CLIP model."""
        return ChromaStore(self.client, self.clip_name, self.clip.identity())

    @cached_property
    def text_store(self) -> ChromaStore:
        """Text-model collection, identity-checked against the text model."""
        return ChromaStore(self.client, self.text_name, self.text.identity())

    def raw_store(self, which: str) -> ChromaStore:
        """A collection opened without loading its model (for status, delete and rebuilds)."""
        if which == "clip" and "clip_store" in self.__dict__:
            return self.clip_store
        if which == "text" and "text_store" in self.__dict__:
            return self.text_store
        return ChromaStore(self.client, self.clip_name if which == "clip" else self.text_name, None)

    def delete_records(self, doc_ids: list[str]) -> None:
        """Delete every record of these documents from both Chroma collections.

        Uses the identity-checked collections when they are open (so a caller that must refuse a
        mismatched collection opens ``clip_store``/``text_store`` first), else opens them plainly.
        """
        if doc_ids:
            self.raw_store("clip").delete_docs(doc_ids)
            self.raw_store("text").delete_docs(doc_ids)

    @cached_property
    def manifest(self) -> Manifest:
        """The per-document state."""
        return Manifest(self.data_dir / "manifest.sqlite3")

    @property
    def keyword_dir(self) -> Path:
        """Folder of the BM25 index."""
        return self.data_dir / "bm25" / self.collection

    def keyword(self) -> KeywordIndex | None:
        """The saved BM25 index, or None if it was never built."""
        return KeywordIndex.load(self.keyword_dir)

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold this collection's writer lock (across threads and processes) for the block.

        Ingestion, deletion and drops take it: with several server workers on one Chroma server,
        two writers would otherwise rebuild the BM25 index from different snapshots. ``flock`` is
        released by the kernel when a holder dies, so a killed job never leaves a stale lock.
        """
        import fcntl
        import threading

        # Re-entrant for the thread that holds it (an ingest with --prune deletes documents): a
        # second flock on a new file descriptor would wait for the first one forever.
        local = self.__dict__.setdefault("_lock_state", threading.local())
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        path = self.data_dir / "locks" / f"{self.collection}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            local.depth = 1
            try:
                yield
            finally:
                local.depth = 0
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def drop(self) -> None:
        """Delete the collection everywhere: both Chroma collections, BM25 and its manifest rows."""
        import shutil

        delete_collection(self.client, self.clip_name)
        delete_collection(self.client, self.text_name)
        shutil.rmtree(self.keyword_dir, ignore_errors=True)
        self.manifest.remove_collection(self.collection)
        for name in ("clip_store", "text_store"):
            self.__dict__.pop(name, None)
