"""How a knowledge base reaches each vector store backend: connect, open a collection, list, drop, let go.

:mod:`mmrag.registry` maps the backends' names to these (``VECTOR_STORES``), so that
:class:`~mmrag.kb.KnowledgeBase` never asks which backend it holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mmrag.protocols import VectorStore


@dataclass(frozen=True)
class VectorBackend:
    """What a knowledge base needs from a vector store backend, so that it never asks which one it has.

    Attributes:
        connect: ``(data_dir, url, timeout) -> client``: the connection a knowledge base opens
            its collections on (claiming the embedded store for this process where there is one).
        open: ``(client, name, identity, owner, may_claim) -> VectorStore``: one collection.
        drop: ``(client, name)``: delete one collection (no error when it does not exist).
        release: ``(data_dir, url)``: let go of what ``connect`` claimed.
        names: ``(client) -> names``: the collections that exist.
        info: ``(client, name) -> {"name", "metadata", "space"}`` of one collection (its embedder
            identity under ``mmrag:`` keys, its owner), or None when it does not exist: what a
            snapshot records.
    """

    connect: Callable[[Path, str | None, float], Any]
    open: Callable[..., VectorStore]
    drop: Callable[[Any, str], None]
    release: Callable[[Path, str | None], None]
    names: Callable[[Any], set[str]]
    info: Callable[[Any, str], "dict[str, Any] | None"]


def _chroma_connect(data_dir: Path, url: str | None, timeout: float) -> Any:
    from mmrag import locks
    from mmrag.stores.chroma import open_client
    from mmrag.stores.damage import verify_once

    if not url:
        locks.claim(
            data_dir / "locks" / "embedded-chroma.lock", what=f"The embedded store {data_dir / 'chroma'}",
            hint="Two processes on one embedded store can corrupt it. Stop that process, send the work through "
                 "its HTTP API (POST /v1/documents, DELETE /v1/documents/...), or run a Chroma server "
                 f"(`chroma run --path {data_dir / 'chroma'}`) and pass --store-url to every process.",
        )
        verify_once(data_dir / "chroma", data_dir / "locks" / "chroma-verified.json")
    return open_client(data_dir, url, timeout=timeout)


def _chroma(client: Any, name: str, identity: Mapping[str, str | int] | None, owner: str | None,
            may_claim: bool) -> VectorStore:
    from mmrag.stores.chroma import ChromaStore

    return ChromaStore(client, name, identity, owner=owner, may_claim=may_claim)


def _chroma_drop(client: Any, name: str) -> None:
    from mmrag.stores.chroma import delete_collection

    delete_collection(client, name)


def _chroma_release(data_dir: Path, url: str | None) -> None:
    if not url:
        release_embedded_store(data_dir)


def release_embedded_store(data_dir: Path) -> None:
    """Give up this process's claim on the embedded store under ``data_dir`` (see :meth:`KnowledgeBase.close`)."""
    from chromadb.api.client import SharedSystemClient

    from mmrag import locks

    # Chroma keeps one system per path for the whole process; drop it, or a later open here would
    # reuse a store another process has changed meanwhile.
    SharedSystemClient.clear_system_cache()
    locks.release(Path(data_dir) / "locks" / "embedded-chroma.lock")


def _chroma_names(client: Any) -> set[str]:
    from mmrag.stores.chroma import collection_names

    return collection_names(client)


def _chroma_info(client: Any, name: str) -> dict[str, Any] | None:
    from mmrag.stores.chroma import collection_info

    return collection_info(client, name)


class _MemoryClients:
    """The fake's collections, one dict per data dir (or server URL) for the life of the process.

    As Chroma keeps one system per path for the whole process, two knowledge bases opened on one
    data dir see the same records, so a snapshot or a restore (which open their own) work on the
    fake as they do on Chroma.
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str | None], dict[str, VectorStore]] = {}
        self._lock = threading.Lock()

    def connect(self, data_dir: Path, url: str | None, timeout: float) -> dict[str, VectorStore]:
        with self._lock:
            return self._clients.setdefault((str(Path(data_dir).resolve()) if not url else "", url), {})


def _memory(client: Any, name: str, identity: Mapping[str, str | int] | None, owner: str | None,
            may_claim: bool) -> VectorStore:
    # The test fake: ``client`` is the data dir's dict of collections (see _MemoryClients).
    from mmrag.stores.memory import InMemoryStore

    store: VectorStore = client.setdefault(name, InMemoryStore(name, identity))
    if identity and not store.identity:
        store.identity = dict(identity)  # created by a reader with no model loaded: claimed now, as Chroma does
    return store


def _memory_drop(client: Any, name: str) -> None:
    client.pop(name, None)


def _memory_info(client: Any, name: str) -> dict[str, Any] | None:
    from mmrag.stores.chroma import IDENTITY_PREFIX

    store = client.get(name)
    if store is None:
        return None
    return {"name": name, "metadata": {f"{IDENTITY_PREFIX}{k}": v for k, v in store.identity.items()}, "space": "cosine"}


CHROMA = VectorBackend(connect=_chroma_connect, open=_chroma, drop=_chroma_drop, release=_chroma_release,
                       names=_chroma_names, info=_chroma_info)
MEMORY = VectorBackend(connect=_MemoryClients().connect, open=_memory, drop=_memory_drop,
                       release=lambda data_dir, url: None, names=lambda client: set(client), info=_memory_info)
