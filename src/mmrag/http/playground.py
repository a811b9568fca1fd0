"""The playground at ``/``: a page to try a knowledge base in a browser (plain HTML and JavaScript).

The page and its script are static files in ``static/``, served as they are (no build step,
no template). The page calls the API with a key the user pastes in and keeps it in a
JavaScript variable only: it never stores it (no cookie, no localStorage) and the server never
sees it except on the API calls themselves. The files carry a Content-Security-Policy that
allows only their own origin, so the page runs no script but its own.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

#: Script and styles only from this origin; images also as data:/blob: (the uploaded query image).
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_FILES = {"/": ("playground.html", "text/html; charset=utf-8"),
          "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
          "/playground.css": ("playground.css", "text/css; charset=utf-8")}


def install(app: FastAPI) -> None:
    """Serve the playground's files on ``app`` (open routes: the files hold no data)."""
    for path, (name, media_type) in _FILES.items():
        app.add_api_route(path, _serve(name, media_type), methods=["GET"], include_in_schema=False)


def _serve(name: str, media_type: str):  # type: ignore[no-untyped-def]
    body = resources.files("mmrag.http").joinpath("static", name).read_bytes()

    def endpoint() -> Response:
        return Response(body, media_type=media_type,
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    endpoint.__name__ = f"playground_{name.replace('.', '_')}"
    return endpoint
