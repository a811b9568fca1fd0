"""Read routes: search, grounded answers (JSON or SSE), OpenAI-compatible chat completions, image bytes."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, format_sse_event

from mmrag.answering import Answer, Citation
from mmrag.http.apikeys import ApiKey
from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.http import access, chat
from mmrag.http.auth import allow_collection, caller_of, require, services_of
from mmrag.http.schemas import (
    AnswerRequest,
    AnswerResponse,
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatUsage,
    CitationOut,
    ErrorBody,
    HitOut,
    ModelList,
    ModelOut,
    QueryFields,
    SearchRequest,
    SearchResponse,
    UsageOut,
)
from mmrag.http.services import Services
from mmrag.images import query_image
from mmrag.tracing import span
from mmrag.types import Hit, ImageAsset, Query

router = APIRouter(tags=["query"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 422, 429, 502, 503, 504)
}
#: With ``stream: true`` the answer routes reply with server-sent events instead of JSON.
STREAMING = {**ERRORS, 200: {"content": {"text/event-stream": {"schema": {}}},
                             "description": "JSON, or server-sent events when `stream` is true."}}


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
def search(body: SearchRequest, request: Request, key: ApiKey | None = Depends(require("read"))) -> SearchResponse:
    """Search a collection by text, by image, or both."""
    services = services_of(request)
    collection = _collection(services, key, body.collection)
    started = time.perf_counter()
    served: list[str] = []
    with span("http.search", collection=collection):
        hits = search_hits(services, collection, body, body.query, served=served, key=key)
    access.note(request.scope, collection=collection, doc_ids=[h.doc_id for h in hits], query=body.query)
    return SearchResponse(collection=collection, retriever=body.retriever,
                          hits=[hit_out(collection, h) for h in hits],
                          took_ms=round((time.perf_counter() - started) * 1000, 2),
                          version=services.versions.label_of(served[0]) if served else None)


@router.post("/v1/answer", response_model=AnswerResponse, responses=STREAMING)
def answer(body: AnswerRequest, request: Request, key: ApiKey | None = Depends(require("read"))) -> Any:
    """A grounded answer with citations; with ``stream: true``, server-sent events.

    Events: ``delta`` (``{"text": ...}``, the model's raw reply as it is generated), then one
    ``answer`` (the checked answer, same shape as the JSON response), then ``done``. The grounding
    check judges the whole reply, so a streamed reply can still end as an abstention: clients show
    the ``answer`` event's text.
    """
    services = services_of(request)
    collection = _collection(services, key, body.collection)
    started = time.perf_counter()
    # One root span per request: the search, the answer and the LLM call (streamed or not) nest in it.
    with span("http.answer", collection=collection, stream=body.stream):
        hits = search_hits(services, collection, body, body.question, key=key)
        access.note(request.scope, collection=collection, context_doc_ids=[h.doc_id for h in hits],
                    query=body.question)
        # ``model`` means here what it means on /v1/chat/completions: an id /v1/models lists, which
        # selects the answer mode as well as the chat model (mmrag.http.chat.choose_model).
        choice = chat.choose_model(services, body.model, body.answer_mode) if body.model else None
        answerer = services.answerer(collection, model=choice.chat if choice else None, k=body.k,
                                     retriever=body.retriever, max_tokens=body.max_tokens, verify=body.verify,
                                     answer_mode=choice.mode if choice else body.answer_mode, caller=caller_of(key))
        llm_started = time.perf_counter()
        if not body.stream:
            result = answerer.answer(body.question, hits)
            _record(services, result, llm_started)
            _cited(request, result)
            return answer_out(result, collection, started)
        deltas, holder = answerer.stream(body.question, hits)

    def events() -> Iterator[bytes]:
        for delta in deltas:
            yield _sse("delta", {"text": delta})
        if holder.answer is not None:
            _record(services, holder.answer, llm_started)
            _cited(request, holder.answer)
            yield _sse("answer", answer_out(holder.answer, collection, started).model_dump())
        yield _sse("done", {})

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache"})


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=STREAMING)
def chat_completions(body: ChatCompletionRequest, request: Request,
                     key: ApiKey | None = Depends(require("read"))) -> Any:
    """OpenAI-compatible chat: the last user message is answered from the knowledge base.

    ``model`` (an id from ``/v1/models``) selects how: the server's default, a chat model that
    generates, or extraction (:mod:`mmrag.http.chat`); the reply and every chunk name it alike.
    The assistant message is the grounded answer; ``citations`` (an extra top-level field, also on
    the last streamed chunk) lists what it stands on, and ``mmrag`` carries the grounding verdict.
    Send ``collection`` (and ``k``) with the OpenAI client's ``extra_body``. ``usage`` counts
    tokens with the answering model's tokenizer; ``stream_options.include_usage`` adds OpenAI's
    final usage chunk. ``n`` > 1 is refused: there is one grounded answer per question.
    """
    if body.n is not None and body.n > 1:
        raise chat.refuse(f"n={body.n}: mmrag returns one grounded answer per request; send n=1 or leave it out",
                          "n")
    services = services_of(request)
    choice = chat.choose_model(services, body.model, body.answer_mode)
    collection = _collection(services, key, body.collection)
    question, image = _last_user_turn(body)
    fields = QueryFields(collection=collection, k=body.k, retriever="hybrid", image=None, rerank=body.rerank,
                         rerank_depth=body.rerank_depth)
    hits = search_hits(services, collection, fields, question, image=image, key=key)
    access.note(request.scope, collection=collection, context_doc_ids=[h.doc_id for h in hits], query=question)
    max_tokens = body.max_completion_tokens or body.max_tokens
    answerer = services.answerer(collection, model=choice.chat, k=body.k, retriever="hybrid", max_tokens=max_tokens,
                                 verify=body.verify, answer_mode=choice.mode, caller=caller_of(key))
    created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    llm_started = time.perf_counter()
    if not body.stream:
        result = answerer.answer(question, hits, image=image)
        _record(services, result, llm_started)
        _cited(request, result)
        cites = [citation_out(collection, c) for c in result.citations]
        return ChatCompletionResponse(
            id=cid, created=created, model=choice.id,
            choices=[ChatChoice(message=ChatChoiceMessage(content=result.text))],
            usage=ChatUsage(**chat.usage_of(answerer, result)), citations=cites, mmrag=_verdict(result, collection))

    deltas, holder = answerer.stream(question, hits, image=image)
    with_usage = chat.include_usage(body)

    def chunks() -> Iterator[bytes]:
        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": choice.id,
                    "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **({"usage": None} if with_usage else {}), **extra}
            return format_sse_event(data_str=json.dumps(data, ensure_ascii=False))

        yield chunk({"role": "assistant", "content": ""})
        for delta in deltas:
            if delta:
                yield chunk({"content": delta})
        result = holder.answer
        if result is not None:
            _record(services, result, llm_started)
            _cited(request, result)
            if result.abstained and result.raw_text.strip():
                # The model said something the grounding check rejected: say so in the message.
                yield chunk({"content": f"\n\n[mmrag grounding check: {result.text}]"})
            elif result.verification and result.verification["unsupported"]:
                flagged = "; ".join(u["text"] for u in result.verification["unsupported"])
                yield chunk({"content": f"\n\n[mmrag verification: not supported by the sources: {flagged}]"})
            cites = [citation_out(collection, c).model_dump() for c in result.citations]
            yield chunk({}, "stop", citations=cites, mmrag=_verdict(result, collection))
            if with_usage:  # OpenAI's last chunk: no choices, the whole answer's usage
                yield chunk(None, usage=chat.usage_of(answerer, result))
        yield format_sse_event(data_str="[DONE]")  # OpenAI's end of stream: not JSON

    return EventSourceResponse(chunks(), headers={"Cache-Control": "no-cache"})


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
def models(request: Request, key: ApiKey | None = Depends(require("read"))) -> ModelList:
    """Models a chat request may name; each selects how the answer is made (see ``/v1/chat/completions``).

    ``mmrag`` is the server's default, a chat model's name generates with it, and
    ``mmrag-extractive`` answers with the context's best sentences and no language model.
    """
    return ModelList(data=[ModelOut(id=m) for m in chat.listed_models(services_of(request))])


@router.get("/v1/collections/{collection}/images/{record_id:path}", responses={
    **ERRORS, 200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The image's bytes."}})
def image(collection: str, record_id: str, request: Request,
          key: ApiKey | None = Depends(require("read"))) -> Response:
    """The pixels of an image record (a standalone image, or one inside a PDF, DOCX, PPTX or HTML file)."""
    from mmrag.images import hit_image, sniff_mime

    services = services_of(request)
    collection = _collection(services, key, collection)
    kb = services.kb(collection)
    found = kb.clip_store.get([record_id])
    # A record the key may not read gets the very same 404 as one that does not exist.
    if not found or not services.searcher(collection).as_caller(caller_of(key)).can_read(found[0]):
        raise NotFoundError(f"no record {record_id!r} in collection {collection!r}")
    access.note(request.scope, collection=collection, doc_ids=[found[0].doc_id])
    data = hit_image(found[0], services.images).read_bytes()
    return Response(data, media_type=sniff_mime(data), headers={"Cache-Control": "private, max-age=300"})


# -- helpers ----------------------------------------------------------------------------------------
def _collection(services: Services, key: ApiKey | None, name: str | None) -> str:
    return allow_collection(key, name or services.settings.collection)


def search_hits(services: Services, collection: str, fields: QueryFields, text: str | None, *,
                image: ImageAsset | None = None, served: list[str] | None = None,
                key: ApiKey | None = None) -> list[Hit]:
    """Run one search as the API's routes (and the MCP tools) do, timing it in the metrics.

    ``served``, when given, receives the physical collection that answered (the alias is read once).
    ``key`` is the request's key or token: the search returns only documents it may read (None:
    auth is off, every document).
    """
    image = image or (query_image(fields.image, "image") if fields.image else None)
    query = Query(text=text if text and text.strip() else None, image=image)
    kwargs: dict[str, Any] = {"modality": fields.modality, "retriever": fields.retriever}
    if fields.filters is not None:
        from mmrag.filters import SearchFilter

        kwargs["filters"] = SearchFilter.from_dict(fields.filters.model_dump())
    if fields.dedupe:
        kwargs["dedupe"] = True
    # Built once per name and shared by every request (RerankerPool); a name the server does not offer is a 400.
    kwargs["reranker"] = services.rerankers.get(fields.rerank)
    kwargs["rerank_depth"] = fields.rerank_depth or services.settings.rerank.depth
    shared = services.searcher(collection)
    shared.query_log = services.metrics.queries  # recent query vectors, for the drift gauge
    searcher = shared.as_caller(caller_of(key))
    if served is not None:
        served.append(searcher.kb.collection)
    started = time.perf_counter()
    hits = searcher.search(query, fields.k, **kwargs)
    services.metrics.retrieval_seconds.labels(fields.retriever).observe(time.perf_counter() - started)
    return hits


def _last_user_turn(body: ChatCompletionRequest) -> tuple[str, ImageAsset | None]:
    for i, message in enumerate(reversed(body.messages)):
        if message.role != "user":
            continue
        where = f"messages[{len(body.messages) - 1 - i}]"
        if isinstance(message.content, str):
            return _question(message.content, where), None
        texts, image = [], None
        for part in message.content or []:
            if part.type == "text" and part.text:
                texts.append(part.text)
            elif part.type == "image_url" and image is None:
                url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
                if not isinstance(url, str) or not url.startswith("data:"):
                    raise InvalidInputError(f"{where}: image_url must be a data: URI (the server fetches no URLs)")
                image = query_image(url, f"{where}.image_url")
        if not texts and image is None:
            raise InvalidInputError(f"{where}: the user message has no text or image")
        return " ".join(texts).strip(), image
    raise InvalidInputError("messages: no user message to answer")


def _question(text: str, where: str) -> str:
    if not text.strip():
        raise InvalidInputError(f"{where}: the user message is empty")
    return text


def _image_uri(collection: str, hit: Hit) -> str | None:
    if hit.modality != "image":
        return None
    return f"/v1/collections/{quote(collection, safe='')}/images/{quote(hit.id, safe='')}"


def hit_out(collection: str, hit: Hit) -> HitOut:
    """A hit as the API returns it (image hits carry the URI of their pixels)."""
    return HitOut(id=hit.id, doc_id=hit.doc_id, source=hit.source, modality=hit.modality, score=hit.score,
                  page=hit.page, text=hit.text, image_uri=_image_uri(collection, hit), metadata=dict(hit.metadata))


def citation_out(collection: str, c: Citation) -> CitationOut:
    """A citation as the API returns it."""
    uri = None
    if c.modality == "image" and c.record_id:
        uri = f"/v1/collections/{quote(collection, safe='')}/images/{quote(c.record_id, safe='')}"
    return CitationOut(n=c.n, doc_id=c.doc_id, source=c.source, page=c.page, modality=c.modality,
                       excerpt=c.excerpt, image_uri=uri, score=c.score)


def answer_out(result: Answer, collection: str, started: float) -> AnswerResponse:
    """An answer as the API returns it."""
    u = result.usage
    return AnswerResponse(
        question=result.question, answer=result.text, abstained=result.abstained, guard=result.guard,
        citations=[citation_out(collection, c) for c in result.citations], model=result.model,
        verification=result.verification, mode=result.mode, abstention=result.abstention,
        usage=UsageOut(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                       total_tokens=u.total_tokens, cost_usd=u.cost_usd),
        collection=collection, took_ms=round((time.perf_counter() - started) * 1000, 2))


def _verdict(result: Answer, collection: str) -> dict[str, Any]:
    return {"collection": collection, "abstained": result.abstained, "guard": result.guard, "producer": result.model,
            "answer": result.text, "cost_usd": result.usage.cost_usd, "verification": result.verification,
            "mode": result.mode, "abstention": result.abstention}


def _record(services: Services, result: Answer, llm_started: float) -> None:
    # Prechecks, the gate and extraction make no LLM call (an auto-mode fallback did make one).
    no_call = (result.guard.startswith(("abstained:no_context", "abstained:low_score", "abstained:calibrated",
                                      "abstained:ungrounded"))
               or result.guard == "extractive")
    if not no_call:
        services.metrics.record_usage(result.model, result.usage, time.perf_counter() - llm_started)


def _cited(request: Request, result: Answer) -> None:
    """Record the documents an answer showed its caller: its citations."""
    access.note(request.scope, doc_ids=[c.doc_id for c in result.citations])


def _sse(event: str, data: dict[str, Any]) -> bytes:
    # FastAPI's framing; the JSON is ours (ensure_ascii=False: the text goes out as written).
    return format_sse_event(event=event, data_str=json.dumps(data, ensure_ascii=False))
