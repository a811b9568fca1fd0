"""KnowledgeBase: one named collection's indexes, manifest and models, opened lazily.

Opening is cheap; models load on first use, so ``status``, ``delete`` and BM25 search never pay
for loading CLIP.

Concurrency rules (see the README's robustness section):

* Every writer of a collection (ingest, delete, reset, uploads, the HTTP deletes and drops) holds
  its writer lock, across threads and processes; the lock names its holder and has a timeout.
* The embedded Chroma store is opened by one process at a time (Chroma is not safe with two
  processes on one folder): a second process is refused, with what to do instead.
* On a shared Chroma server each collection records the data dir that owns it, and no other data
  dir writes to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, cast

from mmrag import locks
from mmrag.chunking import ChunkSpec
from mmrag.errors import StoreError
from mmrag.manifest import Manifest
from mmrag.protocols import Embedder, ImageEmbedder, KeywordIndex, VectorStore
from mmrag.registry import ModelChoice, build_embedder, check_collection_name, keyword_index_factory, vector_backend
from mmrag.stores.backends import release_embedded_store  # noqa: F401 - public here since before the registry
from mmrag.stores.chroma import SERVER_TIMEOUT
from mmrag.stores.split import ModalitySplitStore

log = logging.getLogger(__name__)
#: Manifest flag: this collection's image records live in their own Chroma collection.
IMAGES_SPLIT = "images_split"

#: Seconds a writer waits for another writer of the same collection before giving up.
LOCK_TIMEOUT = 600.0


class KnowledgeBase:
    """The three indexes of one collection (joint CLIP, text model, BM25) plus its manifest.

    Args:
        data_dir: where the manifest, keyword index and (embedded) Chroma live.
        collection: the knowledge base's name.
        models: which models to embed with.
        store_url: a Chroma server URL; ``None`` for the embedded store under ``data_dir``.
        chunk: chunk sizing.
        clip: an already-built joint text/image embedder (the server's shared one, tests,
            benchmarks); else built from ``models`` by :func:`mmrag.registry.build_embedder`.
        text: likewise for the text embedder.
        lock_timeout: seconds a writer waits for another writer of this collection.
        store_timeout: seconds a Chroma server request may take before it fails.
        vector_store: the vector store backend (``registry.VECTOR_STORES``): ``chroma``, or
            ``memory`` (the test fake) for unit tests; this class never asks which it has.
        keyword_index: the keyword index backend (``registry.KEYWORD_INDEXES``).
        manifest: an open manifest of ``data_dir`` to use (a server shares one across its knowledge
            bases, so each one opened costs no sqlite connections); :meth:`close` leaves it open.
    """

    def __init__(self, data_dir: Path, collection: str, models: ModelChoice, *, store_url: str | None = None,
                 chunk: ChunkSpec = ChunkSpec(), clip: ImageEmbedder | None = None, text: Embedder | None = None,
                 lock_timeout: float = LOCK_TIMEOUT, vector_store: str = "chroma",
                 keyword_index: str = "tantivy", store_timeout: float = SERVER_TIMEOUT,
                 manifest: Manifest | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.collection = check_collection_name(collection)
        self.models = models
        self.store_url = store_url
        self.chunk_spec = chunk
        self.lock_timeout = lock_timeout
        self.store_timeout = store_timeout
        self.backend = vector_store
        self._backend = vector_backend(vector_store)
        self._open_keyword = keyword_index_factory(keyword_index)
        self._lock_state = threading.local()
        if clip is not None:
            self.__dict__["clip"] = clip
        if text is not None:
            self.__dict__["text"] = text
        self._owns_manifest = manifest is None
        if manifest is not None:
            self.__dict__["manifest"] = manifest

    # -- models ---------------------------------------------------------------------------------
    @cached_property
    def clip(self) -> ImageEmbedder:
        """The joint text/image embedder (built on first use, through the registry)."""
        return cast(ImageEmbedder, build_embedder(self.models, "clip"))

    @cached_property
    def text(self) -> Embedder:
        """The prose embedder (on the CLIP model's device, as everywhere: see :func:`~mmrag.registry.build_embedder`)."""
        return build_embedder(self.models, "text")

    def bind_identities(self, *, clip: dict[str, str | int], text: dict[str, str | int]) -> None:
        """Check and open the stores against these embedder identities, without loading the models here.

        For a driver whose embeddings are computed elsewhere (the Ray engine's workers).
        """
        self.__dict__["_bound_identities"] = {"clip": dict(clip), "text": dict(text)}

    def _identity(self, which: str) -> dict[str, str | int]:
        bound = self.__dict__.get("_bound_identities")
        if bound:
            return bound[which]  # type: ignore[no-any-return]
        return (self.clip if which == "clip" else self.text).identity()

    # -- stores ---------------------------------------------------------------------------------
    @cached_property
    def client(self) -> Any:
        """The Chroma client; the embedded store is claimed for this process first.

        Raises:
            StoreBusyError: another process has the embedded store open.
        """
        return self._backend.connect(self.data_dir, self.store_url, self.store_timeout)

    @cached_property
    def owner_id(self) -> str:
        """This data dir's id, recorded as the owner of the collections it writes on a shared server."""
        path = self.data_dir / "mmrag-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"Cannot read {path}: {exc.strerror or exc}") from exc
        new = uuid.uuid4().hex
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"mmrag-id.{os.getpid()}.tmp")
            tmp.write_text(new + "\n")
            # link() fails if another process created the id first; then its id wins.
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            tmp.unlink(missing_ok=True)
            return path.read_text().strip()
        except OSError as exc:
            raise StoreError(f"Cannot write {path}: {exc.strerror or exc}") from exc

    @property
    def clip_name(self) -> str:
        """Chroma collection of the joint space."""
        return f"{self.collection}-clip"

    @property
    def image_name(self) -> str:
        """Chroma collection of the joint space's image records (see :mod:`mmrag.stores.split`)."""
        return f"{self.collection}-image"

    @property
    def text_name(self) -> str:
        """Chroma collection of the text model."""
        return f"{self.collection}-text"

    def _store(self, name: str, identity: Any) -> VectorStore:
        return self._backend.open(self.client, name, identity, self.owner_id, self.manifest.has_collection(self.collection))

    def open_collection(self, name: str, identity: Any = None, *, owned: bool = True) -> VectorStore:
        """One physical collection by name (:attr:`clip_name`, :attr:`image_name`, :attr:`text_name`).

        For snapshots and restores, which copy each collection as it is. ``identity`` checks (or
        records, on a new collection) the embedder's; ``owned=False`` opens it without recording
        this data dir as its owner (a read-only copy claims nothing).
        """
        if owned:
            return self._store(name, identity)
        return self._backend.open(self.client, name, identity, None, False)

    def existing_collections(self) -> set[str]:
        """Which of this knowledge base's physical collections exist in the store."""
        return self._backend.names(self.client) & {self.clip_name, self.image_name, self.text_name}

    def collection_info(self, name: str) -> dict[str, Any] | None:
        """A collection's metadata (embedder identity, owner) and space; None when it does not exist."""
        return self._backend.info(self.client, name)

    def _clip_space(self, identity: Any) -> VectorStore:
        texts, images = self._store(self.clip_name, identity), self._store(self.image_name, identity)
        if self.manifest.flag(self.collection, IMAGES_SPLIT) is None:
            self._move_images(texts, images)
        return ModalitySplitStore(texts, images)

    def _move_images(self, texts: Any, images: Any) -> None:
        """Move image records of a collection written before the split into the image collection (once)."""
        if texts.records_where({"modality": "image"}, 1):
            with self.write_lock():
                moved = 0
                while batch := texts.records_where({"modality": "image"}, 1000):
                    images.upsert(batch)  # then delete: a crash in between leaves a copy, not a loss
                    texts.delete([r.id for r in batch])
                    moved += len(batch)
                log.warning("Collection %r: moved %d image records into %r (once)", self.collection, moved,
                            self.image_name)
        self.manifest.set_flag(self.collection, IMAGES_SPLIT, "1")

    @cached_property
    def clip_store(self) -> VectorStore:
        """Joint-space store (text and image collections), identity-checked against the CLIP model."""
        return self._clip_space(self._identity("clip"))

    @cached_property
    def text_store(self) -> VectorStore:
        """Text-model collection, identity-checked against the text model."""
        return self._store(self.text_name, self._identity("text"))

    def bare_store(self, which: str) -> VectorStore:
        """A collection opened bare, without loading its model (for status, delete and rebuilds).

        "Bare" is the one word for "opened without models" (``open_bare``, ``Services._bare``).
        """
        if which == "clip" and "clip_store" in self.__dict__:
            return self.clip_store
        if which == "text" and "text_store" in self.__dict__:
            return self.text_store
        cache = self.__dict__.setdefault("_bare_stores", {})
        if which not in cache:
            cache[which] = self._clip_space(None) if which == "clip" else self._store(self.text_name, None)
        return cache[which]  # type: ignore[no-any-return]

    def delete_records(self, doc_ids: list[str]) -> None:
        """Delete every record of these documents from both Chroma collections.

        Uses the identity-checked collections when they are open (so a caller that must refuse a
        mismatched collection opens ``clip_store``/``text_store`` first), else opens them plainly.
        """
        if doc_ids:
            self.bare_store("clip").delete_docs(doc_ids)
            self.bare_store("text").delete_docs(doc_ids)

    @cached_property
    def manifest(self) -> Manifest:
        """The per-document state."""
        return Manifest(self.data_dir / "manifest.sqlite3")

    @property
    def keyword_dir(self) -> Path:
        """Folder of the keyword (BM25) index."""
        return self.data_dir / "keyword" / self.collection

    @property
    def legacy_keyword_dir(self) -> Path:
        """Where releases before the tantivy index kept a JSON BM25 index (migrated on first open)."""
        return self.data_dir / "bm25" / self.collection

    @cached_property
    def keyword(self) -> KeywordIndex:
        """The keyword index (tantivy), opened from disk; created empty when missing.

        A data dir of the JSON BM25 era (before tantivy) is migrated on this first open: the index
        is rebuilt from the text collection once, under the writer lock, and the old folder removed.
        """
        index = self._open_keyword(self.keyword_dir)
        if self.legacy_keyword_dir.exists():
            self.__dict__["keyword"] = index
            with self.write_lock():
                if self.legacy_keyword_dir.exists():  # another process may have migrated it meanwhile
                    from mmrag.indexing.repair import rebuild_keyword

                    n = rebuild_keyword(self, index)
                    shutil.rmtree(self.legacy_keyword_dir, ignore_errors=True)
                    self.manifest.set_flag(self.collection, "bm25_dirty", None)
                    log.warning("Collection %r: migrated the keyword index to tantivy (%d chunks, once)",
                                self.collection, n)
        return index

    def replace_damaged_keyword_index(self, problem: str) -> KeywordIndex:
        """Move a keyword index that cannot be read aside and start an empty one (the caller holds the lock).

        The caller then rewrites its rows from the text collection (:func:`mmrag.indexing.repair.rebuild_keyword`,
        no embedding); the damaged folder is kept beside it for inspection.
        """
        self.__dict__.pop("keyword", None)
        aside = self.keyword_dir.with_name(f"{self.collection}.damaged-{int(time.time())}")
        try:
            if self.keyword_dir.exists():
                self.keyword_dir.rename(aside)
        except OSError as exc:
            raise StoreError(f"The keyword index {self.keyword_dir} is damaged ({problem}) and cannot be moved "
                             f"aside: {exc.strerror or exc}. Delete it and rerun `mmrag ingest`.") from exc
        log.warning("Collection %r: the keyword index was unreadable (%s); moved it to %s and rebuilding it from "
                    "the text collection", self.collection, problem, aside)
        return self.keyword

    @contextlib.contextmanager
    def write_lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold this collection's writer lock (across threads and processes) for the block.

        Ingestion, deletion, uploads and drops take it. ``flock`` is released by the kernel when a
        holder dies, so a killed job never leaves a stale lock. A writer that waits longer than
        ``timeout`` (default: ``lock_timeout``) gets :class:`~mmrag.errors.StoreBusyError` naming
        the holder's pid, command and start time.
        """
        # Re-entrant for the thread that holds it (an ingest with --prune deletes documents): a
        # second flock on a new file descriptor would wait for the first one forever.
        local = self._lock_state
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        path = self.data_dir / "locks" / f"{self.collection}.lock"
        wait = self.lock_timeout if timeout is None else timeout
        with locks.exclusive(path, timeout=wait, what=f"The writer lock of collection {self.collection!r}"):
            local.depth = 1
            try:
                yield
            finally:
                local.depth = 0

    def close(self) -> None:
        """Let go of the stores, so that another process may open the embedded store.

        The embedded Chroma store is held by one process at a time (see the module docstring);
        a script that builds a knowledge base and then starts ``mmrag serve`` on it closes it first.
        """
        client = self.__dict__.pop("client", None)
        for name in ("clip_store", "text_store", "_bare_stores", "keyword"):
            self.__dict__.pop(name, None)
        if "manifest" in self.__dict__:
            manifest = self.__dict__.pop("manifest")
            if self._owns_manifest:
                manifest.close()
        if client is not None:
            self._backend.release(self.data_dir, self.store_url)

    def check_writable(self) -> None:
        """Raise :class:`~mmrag.errors.ForeignCollectionError` unless this data dir may write both stores."""
        for which in ("clip", "text"):
            self.bare_store(which).check_writable()

    def health(self) -> "Health":
        """Counts against the manifest, and the problems found (see :func:`check_health`)."""
        return check_health(self)

    def drop(self) -> None:
        """Delete the collection everywhere: both Chroma collections, the keyword index and its manifest rows."""
        self.check_writable()
        for name in (self.clip_name, self.image_name, self.text_name):
            self._backend.drop(self.client, name)
        if "keyword" in self.__dict__:
            self.keyword.clear()
        for folder in (self.keyword_dir, self.legacy_keyword_dir):
            shutil.rmtree(folder, ignore_errors=True)
        self.manifest.remove_collection(self.collection)
        for name in ("clip_store", "text_store", "_bare_stores", "keyword"):
            self.__dict__.pop(name, None)


@dataclass(frozen=True)
class Health:
    """What the stores hold against what the manifest expects, and what disagrees."""

    want: tuple[int, int]  # clip, text records the manifest's settled documents account for
    have: tuple[int, int, int]  # clip, text records, keyword rows
    problems: list[str]


def check_health(kb: KnowledgeBase) -> Health:
    """Compare the manifest's totals with each store's count (no scan) and say what to run."""
    col = kb.collection
    want = kb.manifest.totals(col)
    have = (kb.bare_store("clip").count(), kb.bare_store("text").count(), kb.keyword.count())
    problems = []
    pending = kb.manifest.counts(col).get("pending", 0)
    if pending:
        problems.append(f"{pending} document(s) are pending (an interrupted run): rerun `mmrag ingest` on the same "
                        "paths to finish them")
    fix = ("the store was damaged or changed outside mmrag. Rerun `mmrag ingest` on the paths you ingested: it "
           "redoes the documents that disagree from their sources (`mmrag doctor --repair` finds and fixes each one)")
    for what, got, expected in (("clip store", have[0], want[0]), ("text store", have[1], want[1]),
                                ("keyword index", have[2], want[1])):
        if got != expected:
            problems.append(f"the {what} holds {got} records but the manifest expects {expected}: {fix}")
    return Health(want=want, have=have, problems=problems)
