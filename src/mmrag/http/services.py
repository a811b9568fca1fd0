"""What the HTTP routes share: models loaded once, knowledge bases per collection, chat models, keys.

Loading CLIP and the text model takes seconds to minutes, so :meth:`Services.start` loads them in a
background thread: the server accepts connections at once, ``/readyz`` says 503 until the models
are in, and requests that need a model wait for them (up to ``api.ready_timeout``). If loading
fails, whatever the exception, the server never becomes ready: ``/readyz`` stays 503 with the
error, and requests that need a model get ``503 model_unavailable`` saying why.

Once loading has finished (``settled``), uploads a killed server left unfinished are resumed in a
thread of their own (:mod:`mmrag.http.resume`), never on the loader thread or a request.

Every cache here is keyed by a collection name, which clients send: only names that exist get an
entry (existence is read from the one shared manifest, which opens nothing per name), and each
cache holds at most :data:`MAX_OPEN_COLLECTIONS` entries, least recently used first out.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, Iterator, TypeVar

from mmrag.http.apikeys import KeyStore
from mmrag.answering import Answerer
from mmrag.chunking import ChunkSpec
from mmrag.config import Settings
from mmrag.errors import InvalidInputError, ModelUnavailableError, MmragError, NotFoundError
from mmrag.http.metrics import Metrics
from mmrag.http.resume import UploadResume
from mmrag.images import ImageCache
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.versions import Versions
from mmrag.llms import ChatModel
from mmrag.manifest import Manifest
from mmrag.registry import (ModelChoice, RerankerPool, answer_stop, build_chat_model,
                            resolve_models)
from mmrag.retrieval import Searcher
from mmrag.security.labels import Caller

log = logging.getLogger("mmrag.http")
#: Collections whose knowledge base (and searcher) a server keeps open at once; the least recently
#: used is let go beyond it (reopening one costs a few milliseconds of file opens).
MAX_OPEN_COLLECTIONS = 128
V = TypeVar("V")


class Services:
    """State of one server process.

    Args:
        settings: the server's settings (read once, at the edge).
        clip: an already-built CLIP embedder (tests); else built from the settings.
        text: likewise for the text embedder.
        chat_models: already-built chat models by name (tests); others are built on first use.
    """

    def __init__(self, settings: Settings, *, clip: Any = None, text: Any = None,
                 chat_models: dict[str, ChatModel] | None = None) -> None:
        self.settings = settings
        self.models: ModelChoice = resolve_models(settings)
        self.data_dir = Path(settings.data_dir)
        self.keys = KeyStore(settings.api.keys_file or self.data_dir / "api_keys.json")
        #: Images of recently re-read documents (image routes, MCP, vision answers), this server's own.
        self.images = ImageCache()
        self.metrics = Metrics(self.data_dir, index_sizes=self.index_sizes, drift_versions=self._drift_versions,
                               probe_runs=self._probe_runs, drift_recent=settings.lifecycle.drift_recent,
                               drift_threshold=settings.lifecycle.drift_threshold)
        self._clip, self._text = clip, text
        self._chat: dict[str, ChatModel] = dict(chat_models or {})
        self._kbs: _Lru[KnowledgeBase] = _Lru(MAX_OPEN_COLLECTIONS)
        self._searchers: _Lru[Searcher] = _Lru(MAX_OPEN_COLLECTIONS)
        self._lock = threading.Lock()
        #: Set once the models are loaded, and only then.
        self.ready = threading.Event()
        #: Set once loading has finished, whether it worked or not.
        self.settled = threading.Event()
        self.load_error: str | None = None
        self._loader: threading.Thread | None = None
        self._bare_kbs: _Lru[KnowledgeBase] = _Lru(MAX_OPEN_COLLECTIONS)
        #: The rerankers requests may name, each built once and shared (the default one at start-up).
        self.rerankers = RerankerPool(settings)
        #: The resume of interrupted uploads, started once the models are in.
        self.resume = UploadResume(self)

    @cached_property
    def manifest(self) -> Manifest:
        """The data dir's manifest, shared by every knowledge base this process opens (one connection per thread)."""
        return Manifest(self.data_dir / "manifest.sqlite3")

    # -- start-up -------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the embedders in the background, then resume interrupted uploads in a thread of their own (idempotent)."""
        if self._loader is not None or self.settled.is_set():
            return
        from mmrag.http.probing import ProbeMonitor

        self.prober = ProbeMonitor.start_for(self)  # its first round waits for the models
        if self._clip is not None and self._text is not None:
            self._clip, self._text = _Serialized(self._clip), _Serialized(self._text)
            self.ready.set()
            self.settled.set()
            self.resume.start()
            return
        self._loader = threading.Thread(target=self._load, name="mmrag-model-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        from mmrag.registry import build_embedder

        try:
            # Through the registry, as the CLI and Ray do: both models on the configured device.
            if self._clip is None:
                self._clip = build_embedder(self.models, "clip")
            if self._text is None:
                self._text = build_embedder(self.models, "text")
            self.rerankers.get(None)  # the configured reranker loads with the models, not on a first request
            self._clip, self._text = _Serialized(self._clip), _Serialized(self._text)
            log.info("models loaded: %s", self.models.describe())
            self.ready.set()
        except MmragError as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model loading failed: %s", self.load_error)
        except Exception as exc:  # noqa: BLE001 - torch and the hub raise anything; the thread must record it
            # Left to escape, it would end the thread with the server looking ready and its models None.
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model loading failed unexpectedly")
        finally:
            self.settled.set()
        if self.ready.is_set():
            # After settled, in a thread of its own: resuming needs the models (kb() waits for
            # settled), and the search path must not queue behind it.
            self.resume.start()

    def wait_ready(self) -> None:
        """Block until the models are loaded.

        Raises:
            ModelUnavailableError: loading failed, or did not finish within ``api.ready_timeout``.
        """
        self.start()
        if threading.current_thread() is self._loader and not self.settled.is_set():
            # settled is set when the loader returns: waiting for it here would wait out ready_timeout on itself.
            raise RuntimeError("the model loader may not wait for the models it is loading (a bug in mmrag)")
        if not self.settled.wait(self.settings.api.ready_timeout):
            raise ModelUnavailableError("the models are still loading; retry shortly (see /readyz)")
        if self.load_error or not self.ready.is_set():
            raise ModelUnavailableError(f"the server could not load its models: {self.load_error}; fix the model "
                                        "settings (see the server log and /readyz) and restart it")

    # -- knowledge bases ------------------------------------------------------------------------
    def collections(self) -> list[str]:
        """Knowledge bases that hold (or held) documents (a knowledge base's versions count once)."""
        return self.versions.knowledge_bases(self.manifest.collections())

    @property
    def versions(self) -> Versions:
        """The versions and aliases in this data dir (:mod:`mmrag.lifecycle.versions`)."""
        return Versions(self.manifest)

    def physical(self, collection: str | None) -> str:
        """The physical collection a name stands for now: ``kb`` -> its live version, ``kb@N`` -> that version.

        Read on every request (one primary-key lookup), so a promote or rollback in any process
        takes effect on the next request, without a restart.
        """
        return self.versions.resolve(collection or self.settings.collection)

    def kb(self, collection: str | None, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``collection`` (default: the server's), models attached; aliases resolved.

        Raises:
            NotFoundError: the collection does not exist and ``create`` is False.
        """
        name = self.physical(collection)
        # Read from the shared manifest: a name that does not exist opens nothing and is cached nowhere.
        if not create and not self.manifest.has_collection(name):
            raise NotFoundError(f"no collection {collection or name!r}; upload documents to it first (POST /v1/documents)")
        self.wait_ready()
        # The version's chunk spec is read from the manifest before the lock (_bare takes it too).
        spec = self._chunk_spec(name) if name not in self._kbs else None
        with self._lock:
            kb = self._kbs.get(name)
            if kb is None:
                s = self.settings
                kb = KnowledgeBase(self.data_dir, name, self.models, store_url=s.store.url,
                                   chunk=spec or ChunkSpec(s.chunk.size, s.chunk.overlap), clip=self._clip, text=self._text,
                                   lock_timeout=s.store.lock_timeout, store_timeout=s.store.timeout,
                                   manifest=self.manifest)
                for evicted in self._kbs.put(name, kb):
                    self._searchers.pop(evicted, None)  # a searcher holds its knowledge base
            return kb

    def _chunk_spec(self, physical: str) -> ChunkSpec:
        s = self.settings
        return self.versions.chunk_spec(physical, ChunkSpec(s.chunk.size, s.chunk.overlap))

    def collection_sizes(self, name: str, caller: Caller | None = None) -> dict[str, int]:
        """Documents (indexed) and records per index of ``name``'s live version, read without loading any model.

        For a restricted ``caller``, only what it may read is counted (a count must not tell it
        how many documents it cannot see).
        """
        kb = self._bare(self.physical(name))
        counts = kb.manifest.counts(kb.collection)
        sizes = {"documents": counts.get("done", 0), "clip_records": kb.bare_store("clip").count(),
                 "text_records": kb.bare_store("text").count()}
        if caller is not None and not caller.unrestricted:
            from mmrag.security.counts import visible_sizes

            sizes = visible_sizes(kb, caller, self.settings.access.unlabelled, sizes)
        return sizes

    @cached_property
    def jwt_verifier(self) -> Any:
        """The identity provider's token verifier (:mod:`mmrag.security.tokens`); None when none is configured."""
        from mmrag.security.tokens import JwtVerifier

        return JwtVerifier.from_settings(self.settings.access)

    def drop(self, name: str) -> None:
        """Delete collection ``name`` everywhere: every version of it, and its lifecycle rows."""
        from mmrag.lifecycle.reindex import drop_knowledge_base

        names = drop_knowledge_base(self._bare(self.settings.collection), name,
                                    lambda label: self._bare(self.physical(label)))
        with self._lock:
            for physical in names:
                self._kbs.pop(physical, None)
                self._searchers.pop(physical, None)
                self._bare_kbs.pop(physical, None)

    def searcher(self, collection: str | None) -> Searcher:
        """A searcher over ``collection``; its keyword index reloads by itself when another process commits."""
        kb = self.kb(collection)
        with self._lock:
            cached = self._searchers.get(kb.collection)
            if cached is None:
                cached = Searcher.from_settings(kb, self.settings.retrieval, unlabelled=self.settings.access.unlabelled)
                self._searchers.put(kb.collection, cached)
            return cached

    def _bare(self, name: str) -> KnowledgeBase:
        # A knowledge base with no models attached counts records and drops collections; kept per
        # collection (of those that exist: callers check first) so listings do not reopen its stores.
        with self._lock:
            kb = self._bare_kbs.get(name)
            if kb is None:
                kb = KnowledgeBase(self.data_dir, name, self.models, store_url=self.settings.store.url,
                                   lock_timeout=self.settings.store.lock_timeout,
                                   store_timeout=self.settings.store.timeout, manifest=self.manifest)
                self._bare_kbs.put(name, kb)
            return kb

    def _drift_versions(self) -> Iterator[tuple[KnowledgeBase, str]]:
        # What the drift gauge scores: every version of every knowledge base, opened without models.
        for name in self.collections():
            for version in self.versions.list(name):
                yield self._bare(version.physical), version.label

    def _probe_runs(self) -> list[Any]:
        prober = getattr(self, "prober", None)  # set by start(); a scrape may come before it
        return prober.last() if prober is not None else []

    # -- chat -----------------------------------------------------------------------------------
    def allowed_models(self) -> list[str]:
        """Models a request may name: the configured one, its fallbacks and ``api.models``."""
        s = self.settings
        return list(dict.fromkeys([s.llm.model, *s.api.models]))

    def chat_model(self, name: str | None) -> ChatModel:
        """The chat model ``name`` (default: the configured one).

        Raises:
            InvalidInputError: the server does not allow that model.
        """
        allowed = self.allowed_models()
        if name in (None, "", "mmrag"):
            name = allowed[0]
        if name not in allowed and name not in self._chat:
            raise InvalidInputError(f"model {name!r} is not served here; allowed: {', '.join(allowed)} "
                                    "(or 'mmrag' for the default)")
        with self._lock:
            model = self._chat.get(name)  # type: ignore[arg-type]
            if model is None:
                model = build_chat_model(self.settings, name)
                self._chat[name] = model  # type: ignore[index]
            return model

    def answerer(self, collection: str | None, *, model: str | None, k: int, retriever: str,
                 max_tokens: int | None, verify: str = "off", answer_mode: str | None = None,
                 caller: Caller | None = None) -> Answerer:
        """An :class:`Answerer` over ``collection`` with ``model`` (and the detector unless ``verify`` is off).

        ``answer_mode`` (``generate``, ``extractive``, ``auto``; None: the configured default) also
        brings the extractor and the abstention gate (:func:`mmrag.registry.answer_options`).
        """
        from mmrag.registry import answer_mode as resolve_mode
        from mmrag.registry import answer_options

        allowed = self.allowed_models()
        mode = resolve_mode(self.settings, allowed[0] if model in (None, "", "mmrag") else model, answer_mode)
        chat = self.chat_model(model) if mode != "extractive" else None
        opts: dict[str, Any] = {"k": k, "retriever": retriever, "stop": answer_stop(chat.name) if chat else None,
                                **answer_options(self.settings, self._text, mode)}
        if verify != "off":
            from mmrag.answering.verification import HallucinationDetector

            opts["verifier"], opts["verify_mode"] = HallucinationDetector(self._text), verify
        if max_tokens:
            opts["max_tokens"] = max_tokens
        return Answerer(chat, self.searcher(collection).as_caller(caller), images=self.images, **opts)

    def ping_store(self) -> None:
        """Raise :class:`~mmrag.errors.StoreError` if the vector store does not answer."""
        from mmrag.stores.chroma import ping

        ping(self._bare(self.settings.collection).client)

    def index_sizes(self) -> dict[str, dict[str, int]]:
        """Record counts of the collections this process has opened (for /metrics)."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            kbs = dict(self._kbs.items())
        for name, kb in kbs.items():
            try:
                sizes = {"clip": kb.bare_store("clip").count(), "text": kb.bare_store("text").count(),
                         "bm25": kb.keyword.count()}
            except MmragError:  # a scrape must not fail because one store is down
                log.warning("index sizes of collection %r unavailable", name, exc_info=True)
                continue
            out[name] = sizes
        return out

    def close(self) -> None:
        """Release what the process holds open."""
        if getattr(self, "prober", None) is not None:
            self.prober.stop()
        with self._lock:
            self._kbs.clear()
            self._searchers.clear()
            self._bare_kbs.clear()
        if "manifest" in self.__dict__:
            self.__dict__.pop("manifest").close()

    def open_collections(self) -> dict[str, int]:
        """How many entries each per-collection cache holds (each is at most :data:`MAX_OPEN_COLLECTIONS`)."""
        with self._lock:
            return {"knowledge_bases": len(self._kbs), "searchers": len(self._searchers),
                    "bare": len(self._bare_kbs)}


class _Lru(Generic[V]):
    """A dict that keeps its ``limit`` most recently used entries (callers hold the services' lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> list[str]:
        """Store ``value``; returns the keys let go to stay within the limit."""
        self._items[key] = value
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.limit:
            evicted.append(self._items.popitem(last=False)[0])
        return evicted

    def pop(self, key: str, default: V | None = None) -> V | None:
        return self._items.pop(key, default)

    def items(self) -> list[tuple[str, V]]:
        return list(self._items.items())

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class _Serialized:
    """An embedder whose forward passes run one at a time.

    Requests arrive on a thread pool; torch already spreads one forward pass over every core, so
    concurrent passes only fight over them (20 clients on 2 cores made each pass ~20x slower and
    the tail latency unbounded). Queuing keeps each pass fast and the order fair.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_texts(self, texts: Any) -> Any:
        with self._lock:
            return self._inner.embed_texts(texts)

    def embed_images(self, images: Any) -> Any:
        with self._lock:
            return self._inner.embed_images(images)
