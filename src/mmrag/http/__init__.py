"""The HTTP API (``mmrag serve``): :func:`~mmrag.http.app.create_app` builds the FastAPI app.

Routes (one module each under ``routes/``): ``query`` (search, answer, OpenAI-compatible chat,
image bytes), ``documents`` (upload, delete, collections), ``health`` (healthz, readyz, metrics).
Beside them: :mod:`~mmrag.http.apikeys` (the API key store, also written by ``mmrag keys``) and
:mod:`~mmrag.http.mcp` (the MCP server, ``mmrag mcp`` or mounted on the app).
"""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the parts the CLI and the security layer use alone (the key store in
    # mmrag.http.apikeys) import without FastAPI and without a cycle back through the app's routes.
    if name == "create_app":
        from mmrag.http.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
