"""The HTTP API (``mmrag serve``): :func:`~mmrag.http.app.create_app` builds the FastAPI app.

Routes (one module each under ``routes/``): ``query`` (search, answer, OpenAI-compatible chat,
image bytes), ``documents`` (upload, delete, collections), ``health`` (healthz, readyz, metrics).
"""

from mmrag.http.app import create_app

__all__ = ["create_app"]
