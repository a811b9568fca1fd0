"""The MCP server: mmrag's search and grounded answers as Model Context Protocol tools.

Built on the official ``mcp`` SDK (:class:`mcp.server.MCPServer`). Two transports serve the same
tools:

- ``mmrag mcp``: stdio, for an assistant that starts mmrag as a subprocess. It runs as the local
  user, like the rest of the CLI, so it asks for no key.
- ``mmrag serve``: streamable HTTP at ``/mcp``, with the API's bearer keys. The key needs the
  ``read`` scope (checked before the body is read, as on every route) and may only name the
  collections it sees (checked by each tool, exactly as the routes check it).

Tools: ``search`` (text and/or image, filters, k; image hits also come back as MCP image content),
``answer`` (grounded, with citations and the verification verdict), ``list_collections`` and
``get_document`` (a chunk by record id, or a document's page). Failures are tool errors
(``is_error``) whose text is ``<code>: <message>``, the API's error code and message.

This module is not named ``mcp`` so that it never shadows the SDK.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable, Literal, TypeVar

import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent
from pydantic import ValidationError

from mmrag.http.apikeys import ApiKey
from mmrag.errors import InvalidInputError, MmragError, NotFoundError
from mmrag.http import access
from mmrag.http.auth import allow_collection, bearer_token, caller_of, check_key
from mmrag.http.schemas import AnswerRequest, CollectionOut, Filters, SearchRequest
from mmrag.http.services import Services
from mmrag.images import ImageCache
from mmrag.stores.chroma import hit_from
from mmrag.types import Hit

T = TypeVar("T")
INSTRUCTIONS = ("Search a multimodal knowledge base (documents and images) and answer questions from it with "
                "numbered citations. Call list_collections first when you do not know the collection.")
#: Image hits returned as image content per search (each is the original file's bytes).
MAX_IMAGES = 8


def build_server(services: Services, *, use_keys: bool) -> MCPServer:
    """The MCP server over ``services``.

    Args:
        services: the knowledge bases, models and keys (the HTTP server's, or a local one).
        use_keys: check the ``Authorization`` header of each HTTP request (``mmrag serve``);
            False for stdio, which runs as the local user.

    Returns:
        An :class:`mcp.server.MCPServer`; ``.run("stdio")`` serves it on stdio, and
        :func:`mmrag.http.app.create_app` mounts its streamable HTTP app at ``/mcp``.

    Example:
        >>> build_server(Services(Settings(profile="offline")), use_keys=False).run("stdio")  # doctest: +SKIP
    """
    from mmrag import __version__

    server: MCPServer = MCPServer("mmrag", version=__version__, instructions=INSTRUCTIONS)

    def key_of(ctx: Context) -> ApiKey | None:
        if not use_keys:
            return None
        headers = ctx.headers or {}
        return check_key(services, bearer_token(headers.get("authorization")), "read")

    @server.tool(structured_output=False)
    async def search(ctx: Context, query: str | None = None, image: str | None = None,
                     collection: str | None = None, k: int = 5,
                     modality: Literal["all", "text", "image"] = "all",
                     retriever: Literal["hybrid", "clip", "text", "bm25"] = "hybrid",
                     filters: dict[str, Any] | None = None, rerank: str | None = None,
                     rerank_depth: int | None = None) -> CallToolResult:
        """Search the knowledge base by text, by image (base64 or a data: URI), or both.

        Returns the hits as JSON (id, doc_id, source, page, modality, score, text), then each
        image hit's pixels as image content. `filters` takes source_prefix, doc_type, page and
        metadata (equality on ingested keys). `rerank` names a reranker the server offers (`none`:
        off; default the server's) and `rerank_depth` how many top hits it rereads.
        """
        key, scope = key_of(ctx), _scope(ctx)

        def run() -> CallToolResult:
            from mmrag.http.routes.query import hit_out, search_hits

            body = _parse(SearchRequest, query=query, image=image, collection=collection, k=k, modality=modality,
                          retriever=retriever, filters=_parse(Filters, **filters) if filters else None,
                          rerank=rerank, rerank_depth=rerank_depth)
            name = _collection(services, key, body.collection)
            hits = search_hits(services, name, body, body.query, key=key)
            access.note(scope, collection=name, doc_ids=[h.doc_id for h in hits], query=body.query, tool="search")
            out = [hit_out(name, h).model_dump(exclude={"image_uri"}) for h in hits]
            content: list[ContentBlock] = [TextContent(type="text", text=_json({"collection": name, "hits": out}))]
            content += _images([h for h in hits if h.modality == "image"][:MAX_IMAGES], services.images)
            return CallToolResult(content=content, structured_content={"collection": name, "hits": out})

        return await _in_thread(run)

    @server.tool(structured_output=False)
    async def answer(ctx: Context, question: str, collection: str | None = None, k: int = 5,
                     retriever: Literal["hybrid", "clip", "text", "bm25"] = "hybrid",
                     verify: Literal["off", "mark", "drop"] = "mark") -> CallToolResult:
        """Answer a question from the knowledge base, citing sources as [n], or abstain.

        The first content block is the answer followed by its numbered sources; the second is the
        whole result as JSON (citations, the grounding guard, the verification verdict); cited
        images follow as image content.
        """
        key, scope = key_of(ctx), _scope(ctx)

        def run() -> CallToolResult:
            from mmrag.http.routes.query import answer_out, search_hits

            body = _parse(AnswerRequest, question=question, collection=collection, k=k, retriever=retriever,
                          verify=verify)
            name = _collection(services, key, body.collection)
            started = time.perf_counter()
            hits = search_hits(services, name, body, body.question, key=key)
            answerer = services.answerer(name, model=None, k=body.k, retriever=body.retriever, max_tokens=None,
                                         verify=body.verify, caller=caller_of(key))
            result = answerer.answer(body.question, hits)
            access.note(scope, collection=name, doc_ids=[c.doc_id for c in result.citations],
                        context_doc_ids=[h.doc_id for h in hits], query=body.question, tool="answer")
            out = answer_out(result, name, started).model_dump(mode="json")
            content: list[ContentBlock] = [TextContent(type="text", text=_cited_text(out)),
                                           TextContent(type="text", text=_json(out))]
            cited = {c.record_id for c in result.citations if c.modality == "image" and c.record_id}
            content += _images([b.hit for b in result.blocks if b.hit.id in cited], services.images)
            return CallToolResult(content=content, structured_content=out, is_error=False)

        return await _in_thread(run)

    @server.tool(structured_output=False)
    async def list_collections(ctx: Context) -> CallToolResult:
        """The collections you may read, with their document and record counts."""
        key = key_of(ctx)

        def run() -> CallToolResult:
            out = [CollectionOut(name=n, **services.collection_sizes(n, caller_of(key))).model_dump()
                   for n in services.collections() if key is None or key.sees(n)]
            return CallToolResult(content=[TextContent(type="text", text=_json({"collections": out}))],
                                  structured_content={"collections": out})

        return await _in_thread(run)

    @server.tool(structured_output=False)
    async def get_document(ctx: Context, id: str, collection: str | None = None,
                           page: int | None = None) -> CallToolResult:
        """Fetch a chunk or image by its record id (a search hit's `id`), or a document's page.

        With `page`, `id` is a doc_id and the page's text chunks come back in order. An image
        record also comes back as image content.
        """
        key, scope = key_of(ctx), _scope(ctx)

        def run() -> CallToolResult:
            name = _collection(services, key, collection)
            kb = services.kb(name)
            readable = services.searcher(name).as_caller(caller_of(key)).can_read
            if page is None:
                found = kb.text_store.get([id]) or kb.clip_store.get([id])
                # A record the caller may not read gets the same error as one that does not exist.
                if not found or not readable(found[0]):
                    raise NotFoundError(f"no record {id!r} in collection {name!r}; pass a search hit's id "
                                        "(or a doc_id with page)")
                hit = found[0]
                access.note(scope, collection=name, doc_ids=[hit.doc_id], tool="get_document")
                out = _record(hit)
                return CallToolResult(content=[TextContent(type="text", text=_json(out)), *_images([hit], services.images)],
                                      structured_content=out)
            rows = [(meta, text) for rid, meta, text in kb.text_store.records_of([id], include=("metadatas", "documents"))
                    if meta.get("page") == page and readable(hit_from(rid, meta, text, 0.0))]
            if not rows:
                raise NotFoundError(f"no text on page {page} of {id!r} in collection {name!r}")
            access.note(scope, collection=name, doc_ids=[id], tool="get_document")
            rows.sort(key=lambda row: int(row[0].get("chunk", 0)))
            meta = rows[0][0]
            out = {"doc_id": id, "source": meta.get("source"), "page": page, "chunks": len(rows),
                   "text": "\n".join(text or "" for _, text in rows)}
            return CallToolResult(content=[TextContent(type="text", text=_json(out))], structured_content=out)

        return await _in_thread(run)

    return server


# -- helpers ----------------------------------------------------------------------------------------
async def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking work (embedding, Chroma, the LLM) off the event loop; mmrag errors become tool errors."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except MmragError as exc:
        raise ToolError(f"{exc.code}: {exc}") from exc


def _parse(model: type[T], **fields: Any) -> T:
    """Validate tool arguments with the HTTP API's own request models, so both accept the same."""
    try:
        return model(**{k: v for k, v in fields.items() if v is not None})  # type: ignore[no-any-return]
    except ValidationError as exc:
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['msg']})" for e in exc.errors()[:5])
        raise InvalidInputError(f"invalid arguments: {where}") from exc


def _collection(services: Services, key: ApiKey | None, name: str | None) -> str:
    return allow_collection(key, name or services.settings.collection)


def _scope(ctx: Context) -> dict[str, Any] | None:
    """The HTTP request's ASGI scope, where its access-log record lives (None on stdio)."""
    try:
        return getattr(ctx.request_context.request, "scope", None)
    except ValueError:  # no request context (a tool called outside a request)
        return None


def _json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def _record(hit: Hit) -> dict[str, Any]:
    return {"id": hit.id, "doc_id": hit.doc_id, "source": hit.source, "modality": hit.modality, "page": hit.page,
            "text": hit.text, "metadata": dict(hit.metadata)}


def _images(hits: list[Hit], cache: ImageCache) -> list[ContentBlock]:
    """Image content for image hits whose pixels can still be read (a vanished file is left out)."""
    from mmrag.images import hit_image, sniff_mime

    out: list[ContentBlock] = []
    for hit in hits:
        try:
            data = hit_image(hit, cache).read_bytes()
        except (MmragError, OSError):
            continue
        out.append(ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type=sniff_mime(data)))
    return out


def _cited_text(out: dict[str, Any]) -> str:
    lines = [out["answer"]]
    if out["citations"]:
        lines.append("\nSources:")
        for c in out["citations"]:
            page = f", page {c['page']}" if c.get("page") is not None else ""
            lines.append(f"[{c['n']}] {c['doc_id']}{page} ({c['modality']})")
    verdict = out.get("verification")
    if verdict and verdict.get("unsupported"):
        lines.append("\nNot supported by the sources: " + "; ".join(u["text"] for u in verdict["unsupported"]))
    return "\n".join(lines)
