"""Issue 13, acceptance 1: the official MCP client against ``mmrag mcp`` (stdio) and ``/mcp`` (HTTP, keys).

Both list the tools, search the sample corpus (the red circle comes back as MCP image content,
the file's own bytes) and answer the demo question with its citation. Over HTTP a read key for
another collection is refused, and a request without a key never reaches MCP.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any, Awaitable, Callable

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import SAMPLE_CORPUS
from tests.helpers.sample_server import COLLECTION, DEMO_QUESTION, SampleServer

pytestmark = pytest.mark.slow
TOOLS = {"search", "answer", "list_collections", "get_document"}


async def _exercise(client: Client) -> None:
    """What both transports must do, with a key that may read the sample collection (or none)."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    assert {"query", "image", "collection", "k", "filters"} <= set(tools["search"].input_schema["properties"])

    found = await client.call_tool("search", {"query": "a red circle", "modality": "image", "k": 2,
                                              "collection": COLLECTION})
    assert not found.is_error, found.content
    hits = json.loads(found.content[0].text)["hits"]  # type: ignore[union-attr]
    assert hits[0]["doc_id"] == "images/red-circle.png", hits
    images = [b for b in found.content if b.type == "image"]
    assert len(images) == len(hits)
    assert images[0].mime_type == "image/png"  # type: ignore[union-attr]
    assert base64.b64decode(images[0].data) == (SAMPLE_CORPUS / "images" / "red-circle.png").read_bytes()  # type: ignore[union-attr]

    listed = await client.call_tool("list_collections", {})
    assert [c["name"] for c in listed.structured_content["collections"]] == [COLLECTION]  # type: ignore[index]

    text_hit = next(h for h in json.loads((await client.call_tool(
        "search", {"query": "first-aid kit", "retriever": "bm25", "collection": COLLECTION})).content[0].text)["hits"])  # type: ignore[union-attr]
    got = await client.call_tool("get_document", {"id": text_hit["id"], "collection": COLLECTION})
    assert not got.is_error and got.structured_content["text"] == text_hit["text"]  # type: ignore[index]

    answered = await client.call_tool("answer", {"question": DEMO_QUESTION, "collection": COLLECTION})
    assert not answered.is_error, answered.content
    result: dict[str, Any] = answered.structured_content  # type: ignore[assignment]
    print(json.dumps({k: result[k] for k in ("answer", "guard", "citations", "verification")})[:1500])
    assert not result["abstained"], result
    assert "visitor-faq.html" in {c["doc_id"] for c in result["citations"]}
    assert result["verification"] is not None and result["verification"]["mode"] == "mark"
    cited = answered.content[0].text  # type: ignore[union-attr]
    assert cited.startswith(result["answer"]) and "Sources:" in cited
    assert any(f"[{c['n']}] {c['doc_id']}" in cited for c in result["citations"])


def _run(fn: Callable[[], Awaitable[None]]) -> None:
    anyio.run(fn)


def test_stdio(sample_server: SampleServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    params = StdioServerParameters(command=sys.executable, env=env, args=[
        "-m", "mmrag", "mcp", "--profile", "offline", "--data-dir", str(sample_server.data_copy),
        "--collection", COLLECTION])

    async def main() -> None:
        async with Client(params, read_timeout_seconds=300) as client:
            await _exercise(client)
            # No key on stdio (it runs as the local user), but a collection that does not exist is an error.
            missing = await client.call_tool("search", {"query": "x", "collection": "no-such-collection"})
            assert missing.is_error and "not_found" in missing.content[0].text  # type: ignore[union-attr]

    _run(main)


def test_http_with_keys(sample_server: SampleServer) -> None:
    url = f"{sample_server.url}/mcp"

    async def main() -> None:
        async with httpx2.AsyncClient(headers=sample_server.auth(sample_server.reader), timeout=300) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                await _exercise(client)
        async with httpx2.AsyncClient(headers=sample_server.auth(sample_server.other), timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                assert {t.name for t in (await client.list_tools()).tools} == TOOLS  # a read key may connect
                for tool, args in [("search", {"query": "a red circle", "collection": COLLECTION}),
                                   ("search", {"query": "a red circle"}),  # the server's default collection
                                   ("answer", {"question": DEMO_QUESTION, "collection": COLLECTION}),
                                   ("get_document", {"id": "visitor-faq.html#t0", "collection": COLLECTION})]:
                    refused = await client.call_tool(tool, args)
                    assert refused.is_error, (tool, refused.content)
                    assert refused.content[0].text.endswith(  # type: ignore[union-attr]
                        f"forbidden: this key (other) may not use collection '{COLLECTION}'"), refused.content
                listed = await client.call_tool("list_collections", {})
                assert listed.structured_content == {"collections": []}

    _run(main)
    # Without a key (or with an unknown one) the request is refused before MCP sees it, in the API's shape.
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    for headers in ({}, {"Authorization": "Bearer mmrag_nope"}):
        r = httpx.post(url, json=init, headers={**headers, "Accept": "application/json, text/event-stream"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
