"""An API on real Chroma (embedded, and a `chroma run` server), with the hashing and echo fakes for speed.

Every test here runs twice: against the embedded store and against a Chroma server on loopback,
the configuration several workers need. Collection names get a per-test suffix because the
server is shared by the session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from mmrag.http.apikeys import KeyStore
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.http import create_app
from mmrag.http.services import Services
from mmrag.llms.echo import EchoChatModel


@dataclass
class Api:
    """A test client plus the keys made for it."""

    client: TestClient
    services: Services
    echo: EchoChatModel
    suffix: str
    data_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def col(self, name: str) -> str:
        """This test's name for collection ``name``."""
        return f"{name}-{self.suffix}"

    def auth(self, who: str) -> dict[str, str]:
        """Headers carrying ``who``'s key."""
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def upload(self, who: str, collection: str, *files: tuple[str, bytes]) -> Any:
        """POST /v1/documents."""
        return self.client.post("/v1/documents", headers=self.auth(who), data={"collection": collection},
                                files=[("files", (name, data)) for name, data in files])


def make_api(data_dir: Path, store_url: str | None, *, max_upload_mb: float = 1.0) -> Iterator[Api]:
    """Build an :class:`Api` with keys: admin (all), reader (all), writer_a / reader_a (collection a only)."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(data_dir=data_dir, collection=f"default-{suffix}")
    settings.store.url = store_url
    settings.api.max_upload_mb = max_upload_mb
    # The echo fake stands in for the configured (offline) model, whose default mode is extractive;
    # these tests are about the generated path's plumbing. Extractive answers over real models are
    # tested in tests/http/test_serve.py.
    settings.answer.mode = "generate"
    echo = EchoChatModel()
    services = Services(settings, clip=HashingEmbedder(16), text=HashingEmbedder(8),
                        chat_models={settings.llm.model: echo})
    keys = KeyStore(data_dir / "api_keys.json")
    api = Api(TestClient(create_app(settings, services=services)), services, echo, suffix, data_dir)
    a = api.col("a")
    for who, scopes, cols in [("admin", ["admin"], ["*"]), ("reader", ["read"], ["*"]), ("writer", ["write"], ["*"]),
                              ("writer_a", ["write"], [a]), ("reader_a", ["read"], [a])]:
        api.tokens[who], _ = keys.create(who, scopes=scopes, collections=cols)
    with api.client:
        yield api


@pytest.fixture(params=["embedded", "chroma-server"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The API over the embedded store, then over a Chroma server."""
    url = request.getfixturevalue("shared_chroma_server") if request.param == "chroma-server" else None
    yield from make_api(tmp_path / "data", url)
