"""The knowledge-base UI at ``/``: the page and assets built from ``ui/`` (Vite) into ``static/ui/``.

The built files are committed and shipped in the wheel, so a user without node gets the UI;
``make ui`` rebuilds them and ``tests/ui/test_build.py`` checks that they match the source. They
are served as they are, open (they hold no data): the page asks for an API key and keeps it in
a JavaScript variable only (no cookie, no storage), sending it on the API calls themselves.
Every file carries a Content-Security-Policy that allows only this origin's scripts and styles
(no inline script), so text from the index, shown as text, has no way to run.
``/playground``, the page's former name, redirects here.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from mmrag.errors import NotFoundError

#: Script and styles only from this origin; images also as blob: (thumbnails fetched with the key).
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def built() -> Traversable:
    """The folder of the built UI inside the package."""
    return resources.files("mmrag.http").joinpath("static", "ui")


def install(app: FastAPI) -> None:
    """Serve the UI on ``app``: ``/`` (the page), ``/ui/assets/...`` (its hashed assets), ``/playground`` (redirect)."""
    root = built()

    def page() -> Response:
        index = root.joinpath("index.html")
        if not index.is_file():
            raise NotFoundError("the UI is not built in this install; run `make ui` (needs npm) or use the API")
        # The page names its assets by hash: it is re-read on every visit, the assets are cached for good.
        return Response(index.read_bytes(), media_type=_TYPES[".html"], headers={**_HEADERS, "Cache-Control": "no-cache"})

    def asset(name: str) -> Response:
        # Only plain names inside assets/ (Vite's output has no sub-folders): no path reaches elsewhere.
        target = root.joinpath("assets", name)
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        if "/" in name or "\\" in name or name.startswith(".") or suffix not in _TYPES or not target.is_file():
            raise NotFoundError(f"no UI asset {name!r}")
        return Response(target.read_bytes(), media_type=_TYPES[suffix],
                        headers={**_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"})

    def playground() -> RedirectResponse:
        return RedirectResponse("/", status_code=308)

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False, name="ui_page")
    app.add_api_route("/ui/assets/{name}", asset, methods=["GET"], include_in_schema=False, name="ui_asset")
    app.add_api_route("/playground", playground, methods=["GET"], include_in_schema=False, name="ui_playground")
