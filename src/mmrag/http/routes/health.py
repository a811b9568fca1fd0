"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` need no key: load balancers and orchestrators probe them, and they
reveal nothing but "up" and why not ready. ``/metrics`` names every collection this process has
opened and counts its records, so with auth on it needs an **admin** key (the key model has no
narrower scope to give a scraper; Prometheus sends it with ``authorization: {credentials: <key>}``).
With auth off everything is open, as the rest of the API is.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from mmrag.http.apikeys import ApiKey
from mmrag.errors import MmragError
from mmrag.http.auth import require, services_of
from mmrag.http.routes.query import ERRORS
from mmrag.http.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request) -> JSONResponse:
    """The models are loaded and the store answers; 503 (with the reason) otherwise.

    While uploads a killed server left behind are being finished, the server is ready (200) and
    the detail says ``resuming N interrupted upload(s)``: why it is not a 503 is in
    :meth:`mmrag.http.resume.UploadResume.status`.
    """
    services = services_of(request)
    if services.load_error:
        return JSONResponse(Health(status="failed", detail=services.load_error).model_dump(), status_code=503)
    if not services.ready.is_set():
        return JSONResponse(Health(status="loading", detail="loading models").model_dump(), status_code=503)
    try:
        services.collections()
        services.ping_store()
    except MmragError as exc:
        return JSONResponse(Health(status="unavailable", detail=f"{type(exc).__name__}: {exc}").model_dump(),
                            status_code=503)
    return JSONResponse(Health(status="ready", detail=services.resume.status()).model_dump())


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
                       401: ERRORS[401], 403: ERRORS[403]})
def metrics(request: Request, key: ApiKey | None = Depends(require("admin"))) -> Response:
    """Prometheus metrics: request, retrieval and LLM latency, tokens, errors, index sizes (admin key)."""
    return Response(services_of(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
