"""Bearer-token auth as FastAPI dependencies: ``Depends(require("read"))`` and :func:`allow_collection`."""

from __future__ import annotations

from typing import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mmrag.apikeys import ApiKey
from mmrag.errors import ForbiddenError, UnauthorizedError
from mmrag.http.services import Services

_bearer = HTTPBearer(auto_error=False, description="An mmrag API key (`mmrag keys create`).")


def services_of(request: Request) -> Services:
    """The app's :class:`Services`."""
    return request.app.state.services  # type: ignore[no-any-return]


def require(scope: str) -> Callable[..., ApiKey | None]:
    """A dependency that admits requests whose key holds ``scope``; returns the key (None with auth off)."""

    def dependency(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> ApiKey | None:
        services = services_of(request)
        if not services.settings.api.auth:
            return None
        if credentials is None:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
        key = services.keys.authenticate(credentials.credentials)
        if key is None:
            raise UnauthorizedError("unknown or revoked API key")
        if not key.allows(scope):
            raise ForbiddenError(f"this key ({key.name or key.id}) lacks the {scope!r} scope; it has "
                                 f"{', '.join(key.scopes)}")
        return key

    return dependency


def allow_collection(key: ApiKey | None, collection: str) -> str:
    """Check that ``key`` may touch ``collection``; returns the name.

    Raises:
        ForbiddenError: the key is limited to other collections.
    """
    if key is not None and not key.sees(collection):
        raise ForbiddenError(f"this key ({key.name or key.id}) may not use collection {collection!r}")
    return collection
