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

from mmrag.http.apikeys import KeyStore
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.http import create_app
from mmrag.http.services import Services
from tests.helpers.api import Api, make_api
from tests.loaders.test_loaders import build_pdf


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


# -- issue 23, finding 8: what a client can get wrong in a filter is a 400, from every index ------------
def _search(api: Api, collection: str, **body: object) -> httpx.Response:
    return api.client.post("/v1/search", headers=api.auth("reader"),
                           json={"query": "cats and dogs", "collection": collection, **body})


@pytest.fixture
def one_document(embedded: Api) -> str:
    a = embedded.col("a")
    assert embedded.upload("writer", a, ("pets.txt", b"Cats and dogs live here. " * 20)).json()["indexed"] == 1
    return a


@pytest.mark.parametrize("retriever", ["bm25", "hybrid", "clip", "text"])
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70], ids=["int64max+1", "int64min-1", "2^70"])
def test_finding8_an_integer_filter_outside_int64_is_400_on_every_retriever(
        embedded: Api, one_document: str, retriever: str, value: int) -> None:
    r = _search(embedded, one_document, retriever=retriever, filters={"metadata": {"year": value}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and "64-bit" in error["message"] and str(value) in error["message"]
    # The connection survives: the next request on the same client is answered normally.
    ok = _search(embedded, one_document, retriever=retriever, filters={"metadata": {"year": 2**63 - 1}})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("retriever", ["bm25", "hybrid", "clip", "text"])
def test_finding8_too_many_metadata_keys_is_400_naming_the_limit(embedded: Api, one_document: str,
                                                                   retriever: str) -> None:
    from mmrag.keyword import MAX_WHERE_CONDITIONS

    many = {f"k{i}": i for i in range(5000)}
    r = _search(embedded, one_document, retriever=retriever, filters={"metadata": many})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and f"at most {MAX_WHERE_CONDITIONS} metadata keys" in error["message"]
    # The limit is one every index can take: a filter at it is answered (no match), not a 503.
    at_limit = {f"k{i}": i for i in range(MAX_WHERE_CONDITIONS - 1)}  # + the doc_type clause below
    r = _search(embedded, one_document, retriever=retriever, filters={"metadata": at_limit, "doc_type": "txt"})
    assert r.status_code == 200, r.text
    assert r.json()["hits"] == []


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_finding8_check_where_refuses_deep_nesting_without_recursing(levels: int) -> None:
    from mmrag.errors import InvalidInputError
    from mmrag.keyword import MAX_WHERE_DEPTH, check_where

    where: dict[str, object] = {"a": 1}
    for _ in range(levels):
        where = {"$and": [where]}
    with pytest.raises(InvalidInputError, match=f"at most {MAX_WHERE_DEPTH} levels"):
        check_where(where)
    allowed: dict[str, object] = {"a": 1}
    for _ in range(MAX_WHERE_DEPTH - 1):
        allowed = {"$or": [allowed, {"b": {"$gte": 2}}]}
    check_where(allowed)  # the deepest filter allowed still passes


# -- issue 23, finding 4: an image of an extreme aspect ratio is refused before any resize ---------------
def _strip_png(width: int = 120_000, height: int = 1) -> bytes:
    """A real, decodable PNG of one row: a few hundred bytes, but CLIP's resize makes it 64x7,680,000."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 200).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("where", ["search", "chat"])
def test_finding4_an_extreme_aspect_query_image_is_400_naming_its_size(embedded: Api, where: str) -> None:
    strip = _strip_png()
    assert len(strip) < 2048
    a = embedded.col("a")
    embedded.services.settings.collection = a  # the chat route searches the server's collection
    assert embedded.upload("writer", a, ("sign.png", _image("red"))).json()["indexed"] == 1
    if where == "search":
        r = embedded.client.post("/v1/search", headers=embedded.auth("reader"),
                                 json={"image": _uri(strip), "collection": a, "retriever": "clip"})
        field = "image: "
    else:
        content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": _uri(strip)}}]
        r = embedded.client.post("/v1/chat/completions", headers=embedded.auth("reader"),
                                 json={"model": "mmrag", "messages": [{"role": "user", "content": content}]})
        field = "messages[0].image_url: "
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "invalid_input"
    assert message.startswith(field) and "120000x1" in message and "20:1 limit" in message, message


@pytest.mark.slow
def test_finding4_an_extreme_aspect_query_image_allocates_nothing_with_the_real_clip(
        tmp_path: Path, offline_models) -> None:  # type: ignore[no-untyped-def]
    """The real CLIP preprocessing: before the fix, +2.3 GB of RSS and 8 s for this 553-byte PNG."""
    _, clip, text = offline_models
    settings = Settings(data_dir=tmp_path / "data", collection="strip")
    settings.api.auth = False
    services = Services(settings, clip=clip, text=text)
    with TestClient(create_app(settings, services=services)) as client:
        up = client.post("/v1/documents", data={"collection": "strip"},
                         files=[("files", ("note.txt", b"A red sign by the road."))])
        assert up.status_code == 201 and up.json()["indexed"] == 1, up.text
        ok = client.post("/v1/search", json={"image": _uri(_image("red")), "retriever": "clip"})
        assert ok.status_code == 200 and ok.json()["hits"], ok.text  # an ordinary image goes the same path
        before, started = _peak_rss_mib(), time.monotonic()
        r = client.post("/v1/search", json={"image": _uri(_strip_png()), "retriever": "clip"})
        seconds, grown = time.monotonic() - started, _peak_rss_mib() - before
    assert r.status_code == 400, r.text
    assert seconds < 2.0, f"took {seconds:.1f} s"
    assert grown < 200, f"peak RSS grew by {grown:.0f} MiB"


# -- issue 23, finding 7: a small upload is not held behind a long document ------------------------------
@pytest.mark.slow
def test_finding7_a_small_upload_completes_while_a_long_document_ingests(tmp_path: Path) -> None:
    import threading

    from mmrag.llms.echo import EchoChatModel
    from tests.kb.test_write_lock import _PacedHashing

    embedding_long = threading.Event()

    class Paced(_PacedHashing):
        embedded = 0

        def embed_texts(self, texts):  # type: ignore[no-untyped-def]
            self.embedded += len(texts)
            if self.embedded > 300:  # well into the long document's chunks
                embedding_long.set()
            return super().embed_texts(texts)

    settings = Settings(data_dir=tmp_path / "data", collection="busy")
    settings.api.auth = False
    settings.api.max_upload_mb = 64
    services = Services(settings, clip=Paced(16, 0.004), text=HashingEmbedder(8),
                        chat_models={settings.llm.model: EchoChatModel()})
    long_text = " ".join(f"Sentence {n} of the long report says the budget grew by {n % 7} percent."
                         for n in range(12_000)).encode()
    with TestClient(create_app(settings, services=services)) as client:
        def upload(name: str, data: bytes) -> httpx.Response:
            return client.post("/v1/documents", data={"collection": "busy"}, files=[("files", (name, data))])

        assert upload("seed.txt", b"The first note of the collection.").status_code == 201
        long: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: long.update(r=upload("long-report.txt", long_text)))
        worker.start()
        assert embedding_long.wait(60), "the long document never reached its embedding"
        started = time.monotonic()
        small = upload("note.txt", b"A 60-byte note: the budget meeting moved to Thursday.")
        took = time.monotonic() - started
        still_running = worker.is_alive()
        worker.join(timeout=300)
    assert small.status_code == 201 and small.json()["indexed"] == 1, small.text
    assert still_running, "the long upload ended first: the test proved nothing"
    assert took < 3.0, f"the small upload took {took:.1f} s behind a long document"
    assert long["r"].status_code == 201 and long["r"].json()["indexed"] == 1, long["r"].text
