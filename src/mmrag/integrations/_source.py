"""Where the integrations' hits come from: a local :class:`~mmrag.kb.KnowledgeBase`, or a server.

Both modes return the same :class:`FoundHit`, so the LlamaIndex and LangChain retrievers build
their nodes and documents one way. Remote mode calls ``POST /v1/search`` (and ``GET`` an image
hit's ``image_uri`` for its pixels) with the bearer key; HTTP failures become mmrag's own errors,
chosen by the server's ``error`` code, so no httpx exception leaves this module.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Mapping

from mmrag.errors import (
    ForbiddenError,
    InvalidInputError,
    MmragError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from mmrag.types import Hit, ImageAsset, Query

#: The server's error codes, back to the classes it raised (others by status, then UpstreamError).
_BY_CODE: dict[str, type[MmragError]] = {
    "unauthorized": UnauthorizedError, "forbidden": ForbiddenError, "not_found": NotFoundError,
    "invalid_input": InvalidInputError, "payload_too_large": PayloadTooLargeError, "rate_limited": RateLimitedError,
}


@dataclass(frozen=True)
class FoundHit:
    """One search hit, the same shape locally and remotely."""

    id: str
    doc_id: str
    source: str
    modality: str
    score: float
    page: int | None = None
    text: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Remote image hits: the absolute URL of the pixels (GET with the same key).
    image_url: str | None = None
    #: Local hits: the store's hit (for its pixels).
    hit: Hit | None = field(default=None, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """The metadata the integrations attach to a node or document."""
        out: dict[str, Any] = {k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float, bool))}
        out.update({"record_id": self.id, "doc_id": self.doc_id, "source": self.source, "modality": self.modality,
                    "score": self.score})
        if self.page is not None:
            out["page"] = self.page
        if self.image_url:
            out["image_url"] = self.image_url
        return out


class HitSource:
    """Searches a knowledge base in-process (``kb``) or on a server (``url`` + ``api_key``).

    Args:
        kb: a :class:`~mmrag.kb.KnowledgeBase` with its models (local mode).
        url: the server's base URL, e.g. ``http://127.0.0.1:8080`` (remote mode).
        api_key: a key with the ``read`` scope (remote mode; None when the server runs without keys).
        collection: the collection to search remotely (default: the server's); local mode uses ``kb``'s.
        timeout: seconds per remote request.

    Raises:
        InvalidInputError: neither or both of ``kb`` and ``url``.
    """

    def __init__(self, kb: Any = None, *, url: str | None = None, api_key: str | None = None,
                 collection: str | None = None, timeout: float = 60.0) -> None:
        if (kb is None) == (url is None):
            raise InvalidInputError("pass either kb= (a local KnowledgeBase) or url= (an mmrag server), not both")
        self.kb, self.url, self.collection, self.timeout = kb, url.rstrip("/") if url else None, collection, timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._searcher: Any = None

    def search(self, text: str | None, *, image: bytes | None = None, k: int = 5, retriever: str = "hybrid",
               modality: str = "all", filters: Mapping[str, Any] | None = None) -> list[FoundHit]:
        """The top ``k`` hits for ``text`` and/or ``image`` (the file's bytes).

        Raises:
            InvalidInputError: bad arguments (as the API would say).
            UnauthorizedError, ForbiddenError, NotFoundError: the server refused (remote mode).
            UpstreamError: the server failed or could not be reached (remote mode).
        """
        if self.kb is not None:
            return self._local(text, image, k, retriever, modality, filters)
        body: dict[str, Any] = {"query": text, "k": k, "retriever": retriever, "modality": modality}
        if image is not None:
            body["image"] = base64.b64encode(image).decode("ascii")
        if filters:
            body["filters"] = dict(filters)
        if self.collection:
            body["collection"] = self.collection
        data = self._request("POST", "/v1/search", json=body).json()
        return [FoundHit(id=h["id"], doc_id=h["doc_id"], source=h["source"], modality=h["modality"], score=h["score"],
                         page=h.get("page"), text=h.get("text"), metadata=h.get("metadata") or {},
                         image_url=f"{self.url}{h['image_uri']}" if h.get("image_uri") else None)
                for h in data["hits"]]

    def image_bytes(self, found: FoundHit) -> bytes | None:
        """An image hit's pixels (the file's bytes); None for a text hit or pixels no longer there."""
        if found.modality != "image":
            return None
        if found.hit is not None:
            from mmrag.images import hit_image

            try:
                return hit_image(found.hit).read_bytes()
            except (NotFoundError, OSError):
                return None
        if not found.image_url:
            return None
        try:
            return self._request("GET", found.image_url[len(self.url or ""):]).content
        except NotFoundError:
            return None

    # -- internals ----------------------------------------------------------------------------
    def _local(self, text: str | None, image: bytes | None, k: int, retriever: str, modality: str,
               filters: Mapping[str, Any] | None) -> list[FoundHit]:
        from mmrag.filters import SearchFilter
        from mmrag.retrieval import Searcher

        if self._searcher is None:
            self._searcher = Searcher(self.kb)
        query = Query(text=text if text and text.strip() else None,
                      image=ImageAsset(data=image) if image is not None else None)
        hits = self._searcher.search(query, k, retriever=retriever, modality=modality,
                                     filters=SearchFilter.from_dict(filters) if filters else None)
        return [FoundHit(id=h.id, doc_id=h.doc_id, source=h.source, modality=h.modality, score=h.score, page=h.page,
                         text=h.text, metadata=dict(h.metadata), hit=h) for h in hits]

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = httpx.request(method, f"{self.url}{path}", headers=self._headers, timeout=self.timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"{method} {self.url}{path} timed out after {self.timeout} s") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"could not reach the mmrag server at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]  # OpenAI's shape: {"error": {"message", "type", "param", "code"}}
                code, message = str(error.get("code") or ""), str(error.get("message") or response.text)
            except (ValueError, KeyError, TypeError, AttributeError):
                code, message = "", response.text[:500]
            cls = _BY_CODE.get(code) or (InvalidInputError if response.status_code < 500 else UpstreamError)
            raise cls(f"the mmrag server answered {response.status_code} {code or ''}: {message}".replace("  ", " "))
        return response
