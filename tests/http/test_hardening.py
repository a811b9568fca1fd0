"""Issue 8's HTTP findings: image bombs, /metrics exposure, auth before the body, failed model loads, corrupt re-uploads.

Each test is named for what it guards; all run on the embedded store only, since none of them is
about the store.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import zlib
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmrag.apikeys import KeyStore
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.http import create_app
from mmrag.http.services import Services
from tests.http.conftest import Api, make_api
from tests.unit.test_loaders import build_pdf


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Api]:
    """The API over the embedded store, with a 64 MiB upload limit."""
    yield from make_api(tmp_path / "data", None, max_upload_mb=64)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels but holds a few bytes of data: cheap to build and send."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _image(colour: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(buf, format=fmt)
    return buf.getvalue()


# -- finding 9: decompression bombs as query images ------------------------------------------------
@pytest.mark.parametrize("size", [(30000, 30000), (10000, 10000)], ids=["over-2x-pillow-limit", "over-1x-warning"])
def test_a_decompression_bomb_query_image_is_413_on_search(embedded: Api, size: tuple[int, int]) -> None:
    bomb = _png_header_only(*size)
    assert len(bomb) < 4096
    r = embedded.client.post("/v1/search", headers=embedded.auth("reader"),
                             json={"image": _uri(bomb), "collection": embedded.col("a"), "retriever": "clip"})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"]["code"] == "payload_too_large"
    message = body["error"]["message"]
    assert message.startswith("image: ") and "pixels" in message and "downscale" in message


def test_a_decompression_bomb_in_a_chat_message_is_413(embedded: Api) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": _uri(_png_header_only(30000, 30000))}}]
    r = embedded.client.post("/v1/chat/completions", headers=embedded.auth("reader"),
                             json={"model": "mmrag", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"].startswith("messages[0].image_url: ")


def test_a_corrupt_query_image_is_400_naming_the_field(embedded: Api) -> None:
    broken = _image("red")[:60]  # a real header, then nothing
    r = embedded.client.post("/v1/search", headers=embedded.auth("reader"),
                             json={"image": _uri(broken), "collection": embedded.col("a")})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("image: not an image Pillow can read")


# -- finding 13: /metrics behind a key, auth before the body ----------------------------------------
def test_metrics_need_an_admin_key_when_auth_is_on(embedded: Api) -> None:
    client = embedded.client
    r = client.get("/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers=embedded.auth("reader")).status_code == 403
    r = client.get("/metrics", headers=embedded.auth("admin"))
    assert r.status_code == 200 and "mmrag_http_requests_total" in r.text
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    embedded.services.settings.api.auth = False
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("who", [None, "forged", "reader"])
def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(embedded: Api, who: str | None) -> None:
    chunk, chunks = b"y" * (1024 * 1024), 50
    pulled = 0
    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\n").encode()

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield head
        for _ in range(chunks):
            pulled += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if who == "forged":
        headers["Authorization"] = "Bearer mmrag_00000000_" + "x" * 43
    elif who is not None:
        headers.update(embedded.auth(who))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=embedded.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/documents", content=body(), headers=headers)

    r = asyncio.run(send())
    assert r.status_code == (403 if who == "reader" else 401), r.text
    assert pulled <= 2 * len(chunk), f"the server read {pulled / 2**20:.0f} MiB of a refused upload"
    uploads = embedded.data_dir / "uploads"
    assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))


def test_an_unauthenticated_request_is_still_counted_under_its_route(embedded: Api) -> None:
    embedded.client.post("/v1/search", json={"query": "x"})
    text = embedded.client.get("/metrics", headers=embedded.auth("admin")).text
    assert 'mmrag_http_requests_total{method="POST",route="/v1/search",status="401"} 1.0' in text
    assert embedded.client.post("/v1/no-such-route", json={}).status_code == 404


# -- services: a failed model load is not "ready" -----------------------------------------------------
def _model_free_app(tmp_path: Path, settings: Settings, **models: object) -> tuple[TestClient, str]:
    settings.data_dir = tmp_path / "data"
    services = Services(settings, **models)  # type: ignore[arg-type]
    token, _ = KeyStore(settings.data_dir / "api_keys.json").create("w", scopes=["write"])
    return TestClient(create_app(settings, services=services)), token


def _wait_settled(client: TestClient) -> httpx.Response:
    deadline = time.monotonic() + 120
    while True:
        r = client.get("/readyz")
        if r.json()["status"] != "loading" or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_a_bad_model_path_keeps_readyz_503_and_model_requests_503(tmp_path: Path) -> None:
    settings = Settings(collection="kb")
    settings.clip.model, settings.clip.pretrained = "ViT-B-32", str(tmp_path / "missing.safetensors")
    client, token = _model_free_app(tmp_path, settings, text=HashingEmbedder(8))
    with client:
        r = _wait_settled(client)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "missing.safetensors" in r.json()["detail"]
        up = client.post("/v1/documents", headers={"Authorization": f"Bearer {token}"},
                         files=[("files", ("a.txt", b"some text to index"))])
        assert up.status_code == 503 and up.json()["error"]["code"] == "model_unavailable"
        message = up.json()["error"]["message"]
        assert "could not load its models" in message and "missing.safetensors" in message
        assert client.get("/readyz").status_code == 503, "a failed load must never turn ready"


def test_an_unexpected_model_load_error_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmrag.embedders.sentence as sentence

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("CUDA error: out of memory")  # what torch raises, not an MmragError

    monkeypatch.setattr(sentence, "SentenceTransformerEmbedder", broken)
    client, token = _model_free_app(tmp_path, Settings(collection="kb"), clip=HashingEmbedder(16))
    with client:
        r = _wait_settled(client)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "RuntimeError: CUDA error: out of memory" in r.json()["detail"]
        up = client.post("/v1/documents", headers={"Authorization": f"Bearer {token}"},
                         files=[("files", ("a.txt", b"some text to index"))])
        assert up.status_code == 503 and up.json()["error"]["code"] == "model_unavailable", up.text


# -- finding 3: a corrupt re-upload keeps the indexed version ------------------------------------------
def _pdf_with_image() -> bytes:
    return build_pdf([("A catalogue page with one red sign.", [_image("red", "JPEG")])])


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("sign.png", _image("red"), _image("red")[:80] + b"\x00garbage"),
    ("catalogue.pdf", _pdf_with_image(), b"%PDF-1.4 this is not really a pdf"),
], ids=["png", "pdf"])
def test_a_corrupt_reupload_keeps_the_indexed_file_and_its_images(embedded: Api, name: str, good: bytes,
                                                                   bad: bytes) -> None:
    a = embedded.col("a")
    assert embedded.upload("writer", a, (name, good)).json()["indexed"] == 1
    hits = embedded.client.post("/v1/search", headers=embedded.auth("reader"), json={
        "query": "red sign", "collection": a, "retriever": "clip", "modality": "image", "k": 1}).json()["hits"]
    uri = hits[0]["image_uri"]
    before = embedded.client.get(uri, headers=embedded.auth("reader"))
    assert before.status_code == 200

    r = embedded.upload("writer", a, (name, bad))
    assert r.status_code == 201, r.text
    failed = r.json()["failed"]
    assert r.json()["indexed"] == 0 and len(failed) == 1 and failed[0]["path"].endswith(name)
    after = embedded.client.get(uri, headers=embedded.auth("reader"))
    assert after.status_code == 200 and after.content == before.content, "the indexed image is gone or changed"
    stored = embedded.data_dir / "uploads" / a / name
    assert stored.read_bytes() == good, "the corrupt upload overwrote the indexed file"
    assert "previous version is kept" in failed[0]["reason"]
    assert not [p.name for p in stored.parent.iterdir() if p.name.startswith(".")], "a staging file was left behind"


def test_a_good_reupload_still_replaces_the_file(embedded: Api) -> None:
    a = embedded.col("a")
    assert embedded.upload("writer", a, ("sign.png", _image("red"))).json()["indexed"] == 1
    r = embedded.upload("writer", a, ("sign.png", _image("blue")))
    assert r.json()["indexed"] == 1 and r.json()["failed"] == []
    assert (embedded.data_dir / "uploads" / a / "sign.png").read_bytes() == _image("blue")
    assert embedded.upload("writer", a, ("sign.png", _image("blue"))).json()["unchanged"] == 1
