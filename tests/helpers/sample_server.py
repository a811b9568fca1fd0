"""One real server for issue 13's tests: the sample corpus, the offline models, SmolLM2, keys on.

The server is ``create_app`` under uvicorn on a loopback port, in a thread of the test process:
its requests cross a real socket, and an in-memory span exporter installed by a test sees its
spans. It shares the session's offline models (``offline_models``) instead of loading them
again. A copy of its data dir, taken before it opens the store, is there for ``mmrag mcp``,
which runs in a process of its own (one embedded store per process).
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import SAMPLE_CORPUS, free_port, wait_http

COLLECTION = "sample"
DEMO_QUESTION = "When does the building close on weekdays?"


@dataclass
class SampleServer:
    """The running server, its keys and a copy of its data."""

    url: str
    reader: str  # read key for the sample collection
    other: str  # read key for another collection only
    services: Any
    data_copy: Path  # the ingested corpus, for a second process

    def auth(self, token: str) -> dict[str, str]:
        """The Authorization header for ``token``."""
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def sample_server(tmp_path_factory: pytest.TempPathFactory, offline_models: Any) -> Iterator[SampleServer]:
    """Ingest the sample corpus, then serve it (keys on) until the session ends."""
    pytest.importorskip("gguf")
    import uvicorn

    from mmrag import Indexer, KnowledgeBase
    from mmrag.http.apikeys import KeyStore
    from mmrag.config import Settings
    from mmrag.http import create_app
    from mmrag.http.services import Services
    from mmrag.kb import release_embedded_store

    choice, clip, text = offline_models
    root = tmp_path_factory.mktemp("issue13")
    data_dir = root / "data"
    kb = KnowledgeBase(data_dir, COLLECTION, choice, clip=clip, text=text)
    summary = Indexer(kb).ingest([SAMPLE_CORPUS])
    assert summary.indexed >= 8 and not summary.failed, summary
    kb.close()
    release_embedded_store(data_dir)
    keys = KeyStore(data_dir / "api_keys.json")
    reader, _ = keys.create("reader", scopes=["read"], collections=[COLLECTION])
    other, _ = keys.create("other", scopes=["read"], collections=["other-collection"])
    shutil.copytree(data_dir, root / "data-copy")

    settings = Settings(profile="offline", data_dir=data_dir, collection=COLLECTION)
    services = Services(settings, clip=clip, text=text)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services=services), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="issue13-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", 120)
    yield SampleServer(url, reader, other, services, root / "data-copy")
    server.should_exit = True
    thread.join(timeout=30)
