"""Request-body size limits, enforced while the body streams in (before anything is parsed or stored).

A ``Content-Length`` over the limit is refused at once; a body without one (chunked) is counted as
it arrives and refused as soon as it passes the limit. Either way the client gets
``413 payload_too_large`` and the route never runs, so nothing is written.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Mapping

from mmrag.http.schemas import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware capping request bodies: ``per_path`` exact paths, else ``default`` bytes."""

    def __init__(self, app: Any, *, default: int, per_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope.get("path", ""), self.default)
        length = _content_length(scope)
        if length is not None and length > limit:
            await _reject(send, limit)
            return
        seen = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body is over the limit, whatever the app makes of the broken read (FastAPI
            # turns it into a 400) is replaced by the 413 below.
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass  # raised by counting_receive through the app; answered with the 413 just below
        if exceeded:
            await _reject(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # a malformed length is no promise: the body is counted as it arrives instead
    return None


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps(error_body(413, "payload_too_large",
                                 f"request body over the limit of {limit / 1024 / 1024:.1f} MiB")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
