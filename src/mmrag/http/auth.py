"""Bearer-token auth: ``Depends(require("read"))``, :func:`allow_collection`, and :class:`AuthGate`.

Routes declare the scope they need with ``Depends(require(scope))``. FastAPI solves dependencies
only after it has read and parsed the request body, so on its own the dependency would let anyone
who can reach the port make the server read (and spool to disk) a 50 MB upload before its 401.
:class:`AuthGate` runs before the route: it finds the route a request is for, and if that route
requires a scope it checks the key from the ``Authorization`` header first, answering 401/403
without reading a byte of the body. The dependency still runs (it hands the key to the route).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.routing import BaseRoute, Match

from mmrag.http.apikeys import ApiKey
from mmrag.errors import ForbiddenError, MmragError, UnauthorizedError
from mmrag.http.services import Services
from mmrag.security.labels import Caller
from mmrag.security.tokens import looks_like_jwt

_bearer = HTTPBearer(auto_error=False, description="An mmrag API key (`mmrag keys create`).")
#: The scope each ``require`` dependency stands for, so the gate can find a route's scope.
_SCOPE_ATTR = "mmrag_required_scope"


def services_of(request: Request) -> Services:
    """The app's :class:`Services`."""
    return request.app.state.services  # type: ignore[no-any-return]


def check_key(services: Services, token: str | None, scope: str) -> ApiKey | None:
    """The key behind ``token`` if it holds ``scope``; None when auth is off.

    Args:
        services: the server's services (settings and key store).
        token: the bearer token, or None when the request sent none.
        scope: ``read``, ``write`` or ``admin``.

    A token that looks like a JWT is verified by the configured identity provider's key
    (:mod:`mmrag.security.tokens`) when one is configured; any other is an mmrag API key.

    Raises:
        UnauthorizedError: no token, or one the server does not know (or that was revoked), or
            a JWT that fails verification.
        ForbiddenError: the key lacks ``scope``.
        ConfigError: the key file is unreadable.
    """
    if not services.settings.api.auth:
        return None
    if token is None:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    verifier = services.jwt_verifier
    if verifier is not None and looks_like_jwt(token):
        key: ApiKey | None = verifier.verify(token)
    else:
        key = services.keys.authenticate(token)
    if key is None:
        raise UnauthorizedError("unknown or revoked API key")
    if not key.allows(scope):
        raise ForbiddenError(f"this key ({key.name or key.id}) lacks the {scope!r} scope; it has "
                             f"{', '.join(key.scopes)}")
    return key


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None (as :class:`HTTPBearer` reads it)."""
    scheme, token = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and token) or scheme.lower() != "bearer":
        return None
    return token


def require(scope: str) -> Callable[..., ApiKey | None]:
    """A dependency that admits requests whose key holds ``scope``; returns the key (None with auth off)."""

    def dependency(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> ApiKey | None:
        return check_key(services_of(request), credentials.credentials if credentials else None, scope)

    setattr(dependency, _SCOPE_ATTR, scope)
    return dependency


def caller_of(key: ApiKey | None) -> Caller | None:
    """The per-document access of a request's key or token; None (every document) when auth is off."""
    return None if key is None else key.caller()


def allow_collection(key: ApiKey | None, collection: str) -> str:
    """Check that ``key`` may touch ``collection``; returns the name.

    Raises:
        ForbiddenError: the key is limited to other collections.
    """
    if key is not None and not key.sees(collection):
        raise ForbiddenError(f"this key ({key.name or key.id}) may not use collection {collection!r}")
    return collection


def required_scope(dependant: Dependant) -> str | None:
    """The scope a route's dependencies require (searched depth first), or None for an open route."""
    for dep in dependant.dependencies:
        scope = getattr(dep.call, _SCOPE_ATTR, None) or required_scope(dep)
        if scope:
            return str(scope)
    return None


class AuthGate:
    """ASGI middleware that checks a route's key before the body is read.

    Args:
        app: the next ASGI app.
        services: the server's services.
        routes: the API's routes as their routers hold them (included without a prefix). The
            gate matches requests against these itself: the app's router only matches after the
            middleware, and FastAPI's included-router wrappers are private.
        refuse: renders an :class:`~mmrag.errors.MmragError` as the ASGI response (the app's one
            error shape); called with the error, the scope, ``receive`` and ``send``.
    """

    def __init__(self, app: Any, *, services: Services, routes: Sequence[BaseRoute],
                 refuse: Callable[[MmragError, dict[str, Any], Any, Any], Awaitable[None]]) -> None:
        self.app = app
        self.services = services
        self.refuse = refuse
        # Walk each route's dependencies once, not per request.
        self._guarded = [(r, scope) for r in routes if isinstance(r, APIRoute)
                         if (scope := required_scope(r.dependant)) is not None]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.services.settings.api.auth:
            for route, needed in self._guarded:
                if route.matches(scope)[0] != Match.FULL:
                    continue
                headers = dict(scope.get("headers") or [])
                authorization = headers.get(b"authorization", b"").decode("latin-1") or None
                try:
                    check_key(self.services, bearer_token(authorization), needed)
                except MmragError as exc:
                    # The router would have set it: the refused request's metrics keep its route label.
                    scope["route"] = route
                    await self.refuse(exc, scope, receive, send)
                    return
                break
        await self.app(scope, receive, send)
