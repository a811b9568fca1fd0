"""Issue 27, acceptance 2: OpenAI's conventions to the letter, through the official ``openai`` client.

A real server (``create_app`` under uvicorn on a loopback port, the offline models, SmolLM2, keys
on) is driven by the official client: its typed errors (``BadRequestError`` for ``n=2``,
``NotFoundError``, ``AuthenticationError``) carry ``code``, ``type`` and ``param``; ``model`` is the
same in every chunk and the reply; ``usage`` counts tokens (also as the final chunk that
``stream_options.include_usage`` asks for); and naming SmolLM2 makes SmolLM2 generate. Also:
``/docs`` and ``/redoc`` load only assets the server itself serves.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import SAMPLE_CORPUS, free_port, wait_http
from tests.helpers.api import Api

pytestmark = pytest.mark.slow

COLLECTION = "sample"
QUESTION = "When does the building close on weekdays?"
SMOLLM = "mmrag-local/smollm2-135m"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, offline_models: Any) -> Iterator[tuple[str, str]]:
    """The sample corpus served over a real socket, with a read key for it."""
    pytest.importorskip("gguf")
    import uvicorn

    from mmrag import Indexer, KnowledgeBase
    from mmrag.http.apikeys import KeyStore
    from mmrag.config import Settings
    from mmrag.http import create_app
    from mmrag.http.services import Services
    from mmrag.kb import release_embedded_store

    choice, clip, text = offline_models
    data_dir = tmp_path_factory.mktemp("openai") / "data"
    kb = KnowledgeBase(data_dir, COLLECTION, choice, clip=clip, text=text)
    summary = Indexer(kb).ingest([SAMPLE_CORPUS])
    assert summary.indexed >= 8 and not summary.failed, summary
    kb.close()
    release_embedded_store(data_dir)
    token, _ = KeyStore(data_dir / "api_keys.json").create("reader", scopes=["read"], collections=["*"])
    settings = Settings(profile="offline", data_dir=data_dir, collection=COLLECTION)
    port = free_port()
    app = create_app(settings, services=Services(settings, clip=clip, text=text))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, name="openai-conventions-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", 120)
    yield url, token
    uv.should_exit = True
    thread.join(timeout=30)


def _client(server: tuple[str, str], key: str | None = None) -> Any:
    from openai import OpenAI

    url, token = server
    return OpenAI(base_url=f"{url}/v1", api_key=key or token, timeout=120, max_retries=0)


def _ask(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": QUESTION}], **extra}


def test_n_above_one_is_a_bad_request_with_code_and_param(server: tuple[str, str]) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        _client(server).chat.completions.create(model="mmrag", n=2, **_ask())
    e = caught.value
    assert e.status_code == 400 and e.code == "invalid_input" and e.param == "n" and e.type == "invalid_request_error"
    assert "n=2" in e.message


def test_unknown_collection_and_bad_key_are_typed_errors_with_codes(server: tuple[str, str]) -> None:
    from openai import AuthenticationError, BadRequestError, NotFoundError

    client = _client(server)
    with pytest.raises(NotFoundError) as missing:
        client.chat.completions.create(model="mmrag", **_ask(extra_body={"collection": "no-such-kb"}))
    assert missing.value.code == "not_found" and missing.value.type == "not_found_error"
    assert "no-such-kb" in missing.value.message
    with pytest.raises(AuthenticationError) as refused:
        _client(server, "mmrag_00000000_" + "x" * 43).chat.completions.create(model="mmrag", **_ask())
    assert refused.value.code == "unauthorized" and refused.value.type == "authentication_error"
    with pytest.raises(BadRequestError) as unserved:
        client.chat.completions.create(model="openai/gpt-4o", **_ask())
    assert unserved.value.code == "invalid_input" and unserved.value.param == "model"
    assert "/v1/models" in unserved.value.message


def test_models_lists_the_ids_that_select_a_mode(server: tuple[str, str]) -> None:
    ids = [m.id for m in _client(server).models.list()]
    assert ids == ["mmrag", SMOLLM, "mmrag-extractive"]


def test_default_model_is_the_same_in_reply_and_chunks_and_counts_usage(server: tuple[str, str]) -> None:
    client = _client(server)
    reply = client.chat.completions.create(model="mmrag", **_ask())
    assert (reply.model_extra or {})["mmrag"]["mode"] == "extractive"  # the offline default
    assert reply.model == "mmrag-extractive" and "18" in (reply.choices[0].message.content or "")
    u = reply.usage
    assert u is not None and u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    plain = list(client.chat.completions.create(model="mmrag", stream=True, **_ask()))
    assert {c.model for c in plain} == {reply.model}
    assert all(c.usage is None for c in plain) and plain[-1].choices  # no usage chunk unless asked

    chunks = list(client.chat.completions.create(model="mmrag", stream=True,
                                                 stream_options={"include_usage": True}, **_ask()))
    assert {c.model for c in chunks} == {reply.model}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == u.model_dump()  # the same answer, counted the same way
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


@pytest.mark.long  # 31 s: SmolLM2 generates on the CPU; the model-by-name routing is checked in make test by the extractive model
def test_smollm2_selected_by_name_generates(server: tuple[str, str]) -> None:
    client = _client(server)
    reply = client.chat.completions.create(model=SMOLLM, max_tokens=16, **_ask())
    verdict = (reply.model_extra or {})["mmrag"]
    assert reply.model == SMOLLM and verdict["mode"] == "generate" and verdict["producer"] == SMOLLM
    assert verdict["guard"] != "extractive"
    u = reply.usage
    # SmolLM2's own tokenizer: the prompt holds the context blocks, the reply at most max_tokens.
    assert u is not None and u.prompt_tokens > 50 and 0 < u.completion_tokens <= 16

    chunks = list(client.chat.completions.create(model=SMOLLM, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}, **_ask()))
    assert {c.model for c in chunks} == {SMOLLM}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 16 and chunks[-1].usage.prompt_tokens == u.prompt_tokens


def _answer(server: tuple[str, str], model: str) -> httpx.Response:
    url, token = server
    return httpx.post(f"{url}/v1/answer", headers={"Authorization": f"Bearer {token}"}, timeout=120,
                      json={"question": QUESTION, "model": model, "max_tokens": 16})


def test_answer_route_reads_model_as_chat_does(server: tuple[str, str]) -> None:
    """``/v1/answer``'s ``model`` is an id from ``/v1/models`` too: it selects the mode, not just the LLM."""
    assert _answer(server, "mmrag-extractive").json()["mode"] == "extractive"
    unknown = _answer(server, "gpt-nope")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model"


@pytest.mark.long  # SmolLM2 loads in the server: 22 s; test_serve.py keeps a generated answer in make test
def test_answer_route_generates_with_the_model_it_names(server: tuple[str, str]) -> None:
    generated = _answer(server, SMOLLM).json()
    assert generated["mode"] == "generate" and generated["model"] == SMOLLM and generated["guard"] != "extractive"


def test_extractive_model_refuses_to_generate(server: tuple[str, str]) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        _client(server).chat.completions.create(model="mmrag-extractive",
                                                **_ask(extra_body={"answer_mode": "generate"}))
    assert caught.value.param == "answer_mode"


# -- the same shape without a model: validation errors and the body limit (fakes, no server) -------
def test_validation_errors_name_the_field_in_param(api: Api) -> None:
    r = api.client.post("/v1/search", headers=api.auth("reader"), json={"query": "x", "k": 1000})
    assert r.status_code == 422
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                  "param": "k", "code": "invalid_input"}}
    assert r.json()["error"]["message"].startswith("invalid request: k: ")
    r = api.client.post("/v1/chat/completions", headers=api.auth("reader"),
                        json={"model": "mmrag", "n": 3, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = api.client.get("/v1/collections", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.json()["error"]["code"] == "unauthorized" and r.json()["error"]["param"] is None


# -- /docs offline ------------------------------------------------------------------------------
def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(api: Api, page: str) -> None:
    r = api.client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = _asset_urls(r.text)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "cdn" not in r.text.lower() and "https://" not in r.text
    kinds = set()
    for url in urls:
        asset = api.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
        kinds.add(asset.headers["content-type"].split(";")[0])
    expected = {"text/javascript", "text/css", "image/png"} if page == "/docs" else {"text/javascript", "image/png"}
    assert kinds == expected


def test_swagger_ui_renders_the_openapi_version_the_server_emits(api: Api) -> None:
    # FastAPI emits OpenAPI 3.1; Swagger UI 4 (what swagger-ui-bundle ships) refuses it, 5 renders it.
    spec = api.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1.")
    bundle = api.client.get("/docs/assets/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version and int(version.group(1)) >= 5 and "isOAS31" in bundle


def test_docs_render_in_chromium_without_network(server: tuple[str, str], tmp_path: Path) -> None:
    """Swagger UI draws the API's operations in a browser that has only the server to talk to."""
    from tests.helpers.chromium import chromium
    from tests.helpers.cdp import Browser

    chromium()  # skips when no browser is installed

    url, _ = server
    assert httpx.get(f"{url}/docs").status_code == 200
    with Browser(tmp_path / "profile") as b:
        b.goto(f"{url}/docs")
        b.wait("document.querySelectorAll('.opblock').length > 10", 60)
        paths = b.eval("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
        shot = b.screenshot(tmp_path / "docs.png")
    assert any("/v1/chat/completions" in p for p in paths), paths
    print(f"screenshot: {shot}")
