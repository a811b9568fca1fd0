"""The FastAPI application: :func:`create_app` wires settings, services, routes, auth and errors.

One error handler turns every :class:`~mmrag.errors.MmragError` into OpenAI's error shape,
``{"error": {"message", "type", "param", "code"}}`` (``code`` is mmrag's stable code, ``type``
follows the status: :func:`~mmrag.http.schemas.error_type`), with the error's status code, so the
official ``openai`` client raises its typed errors with ``e.code`` set; request-validation errors
are ``422 invalid_input`` in the same shape, ``param`` naming the first field at fault; anything
unexpected is a logged ``500 internal_error`` that shows no internals.
:class:`~mmrag.http.auth.AuthGate` refuses keyless requests in the same shape, before their body
is read. ``/docs`` and ``/redoc`` load their assets from the package (:mod:`mmrag.http.docs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from mmrag.config import Settings
from mmrag.errors import MmragError, UnauthorizedError
from mmrag.http import access, docs, ui
from mmrag.http.auth import AuthGate, bearer_token, check_key
from mmrag.http.limits import BodyLimit
from mmrag.http.schemas import error_body
from mmrag.http.services import Services

log = logging.getLogger("mmrag.http")


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """Build the API.

    Args:
        settings: read from the environment when None.
        services: prebuilt services (tests pass fakes through it); else built from ``settings``.

    Example:
        >>> app = create_app(Settings(profile="offline"))  # doctest: +SKIP
        >>> uvicorn.run(app, port=8080)                     # doctest: +SKIP
    """
    from mmrag import __version__
    from mmrag.http.routes import catalog, documents, drift, health, labels, lifecycle, probes, query

    from mmrag import tracing

    settings = settings or Settings()
    tracing.configure()  # OTEL_* variables, read here at the edge (each worker builds its own app)
    services = services or Services(settings)
    mcp = _KeyedMcp(services, settings)
    access_writer = access.open_writer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        async with mcp.running():
            yield
        services.close()
        access.close_writer(access_writer)

    app = FastAPI(
        title="mmrag", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served by mmrag.http.docs, with the assets from the package
        description="Multimodal retrieval-augmented generation: search, grounded answers with citations, "
                    "an OpenAI-compatible chat endpoint, and document upload. Authenticate with "
                    "`Authorization: Bearer <API key>` (create keys with `mmrag keys create`).",
    )
    app.state.services = services
    upload_limit = int(settings.api.max_upload_mb * 1024 * 1024)
    # Uploads get the configured limit plus room for the multipart framing; JSON bodies (which
    # may carry a base64 image) get a fixed 32 MiB.
    app.add_middleware(BodyLimit, default=32 * 1024 * 1024, per_path={"/v1/documents": upload_limit + 64 * 1024})

    async def refuse(exc: MmragError, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _error_response(services, exc, scope.get("method", ""), scope.get("path", ""))(scope, receive, send)

    # Added after BodyLimit, so it runs first: a keyless client learns nothing, not even the size limit.
    routers = [query.router, labels.router, documents.router, health.router, lifecycle.router, probes.router,
               drift.router, catalog.router]
    routes = [route for router in routers for route in router.routes]
    app.add_middleware(AuthGate, services=services, routes=routes, refuse=refuse)
    _install_metrics(app, services)
    _install_errors(app, services)
    # Added last, so outermost: refused requests are logged, and streamed replies once fully sent.
    app.add_middleware(access.AccessLog, services=services, writer=access_writer)
    for router in routers:
        app.include_router(router)
    app.router.routes.append(Route("/mcp", endpoint=mcp, methods=["GET", "POST", "DELETE"]))
    ui.install(app)
    docs.install(app)
    return app


class _KeyedMcp:
    """``/mcp``: the MCP tools over streamable HTTP, behind the API's keys.

    A missing, unknown or read-less key is refused in the API's error shape before MCP sees the
    request; each tool also checks that the key sees the collection it names (see
    :mod:`mmrag.http.mcp`).
    """

    def __init__(self, services: Services, settings: Settings) -> None:
        from mmrag.http.mcp import build_server

        self.services = services
        self.server = build_server(services, use_keys=settings.api.auth)
        self.sessions: Any = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve MCP for one lifespan of the app (the SDK's session manager runs once, so each gets a new one)."""
        from mcp.server.transport_security import TransportSecuritySettings

        loopback = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        # Stateless: any worker can answer any request (several workers share no session table).
        # With keys on, a DNS-rebinding page has no key to send, so Host is not checked (the API
        # behind a proxy keeps working); without keys, only loopback names are let through.
        self.server.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=True, json_response=True,
            max_request_body_size=32 * 1024 * 1024,
            transport_security=TransportSecuritySettings(
                enable_dns_rebinding_protection=not self.services.settings.api.auth, allowed_hosts=loopback,
                allowed_origins=[f"http://{h}" for h in loopback]))
        sessions = self.server.session_manager
        async with sessions.run():
            self.sessions = sessions
            try:
                yield
            finally:
                self.sessions = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.services.settings.api.auth:
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            try:
                check_key(self.services, bearer_token(authorization), "read")
            except MmragError as exc:
                response = _error_response(self.services, exc, scope.get("method", ""), scope.get("path", ""))
                await response(scope, receive, send)
                return
        if self.sessions is None:
            from mmrag.errors import ModelUnavailableError

            exc = ModelUnavailableError("the MCP endpoint is not running (the server is starting or stopping)")
            await _error_response(self.services, exc, scope.get("method", ""), scope.get("path", ""))(scope, receive, send)
            return
        await self.sessions.asgi_app(scope, receive, send)


#: Methods counted under their own name; any other token a client sends is counted as ``other``.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _install_metrics(app: FastAPI, services: Services) -> None:
    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            # The method is the client's to choose (any token passes the HTTP parser): as a label
            # as it came, each new one would add series to /metrics for good.
            method = request.method if request.method in _METHODS else "other"
            services.metrics.requests.labels(method, route, str(status)).inc()
            services.metrics.request_seconds.labels(method, route).observe(time.perf_counter() - started)


def _error_response(services: Services, exc: MmragError, method: str, path: str) -> JSONResponse:
    """The response for an :class:`MmragError`, counted in the metrics (logged when it is the server's fault)."""
    services.metrics.errors.labels(exc.code).inc()
    if exc.status_code >= 500:
        log.error("%s %s: %s: %s", method, path, type(exc).__name__, exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthorizedError) else None
    body = error_body(exc.status_code, exc.code, str(exc), exc.param)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _install_errors(app: FastAPI, services: Services) -> None:
    @app.exception_handler(MmragError)
    async def mmrag_error(request: Request, exc: MmragError) -> JSONResponse:
        return _error_response(services, exc, request.method, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        services.metrics.errors.labels("invalid_input").inc()
        problems = [(_field(e.get("loc", ())), str(e.get("msg", ""))) for e in exc.errors()]
        listed = "; ".join(f"{where}: {msg}" if where else msg for where, msg in problems[:5])
        param = problems[0][0] if problems else None
        return JSONResponse(error_body(422, "invalid_input", f"invalid request: {listed}", param or None),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        services.metrics.errors.labels("internal_error").inc()
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal_error", "internal server error; see the server log"),
                            status_code=500)


def _field(loc: Any) -> str:
    """A validation error's location as OpenAI's ``param`` names it: ``messages.0.content``, no ``body`` prefix."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    return ".".join(parts)
