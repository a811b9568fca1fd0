"""``/docs`` (Swagger UI) and ``/redoc`` that work offline: their scripts come from the package, not a CDN.

FastAPI's default pages load Swagger UI and ReDoc from jsDelivr, so on an offline machine they
are blank. This serves the same pages (FastAPI's own ``get_swagger_ui_html`` and
``get_redoc_html``, its documented "self-hosting JavaScript and CSS for docs" recipe) with the
assets from the ``fastapi-offline`` wheel, mounted at ``/docs/assets``.

Why that wheel and not ``swagger-ui-bundle``: ``swagger-ui-bundle`` 1.1.0 (its newest) ships
Swagger UI 4.15.5, which renders only ``openapi: 3.0.n`` and answers FastAPI's ``3.1.0`` document
with "Unable to render this definition". ``fastapi-offline`` 1.7.7 ships Swagger UI 5.32 (OpenAPI
3.1) and ReDoc 2; only its static files are used here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from mmrag.errors import MissingDependencyError

ASSETS = "/docs/assets"
ASSETS_PACKAGE = "fastapi_offline"


def assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's files in the installed ``fastapi-offline`` package.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("/docs needs the Swagger UI assets: pip install 'fastapi-offline==1.7.7'")
    return Path(list(spec.submodule_search_locations)[0]) / "static"


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` on ``app`` (built with ``docs_url=None, redoc_url=None``), assets local.

    Open routes, like ``/openapi.json``: the pages hold no data; the API calls they make carry a key.
    """
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png", oauth2_redirect_url=None)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=title,
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)
