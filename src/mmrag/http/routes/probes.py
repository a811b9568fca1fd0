"""Read route of probes: a knowledge base's probes and the server's last probe round of each version.

The response models live here rather than in ``http/schemas.py``: they describe this route only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from mmrag.http.apikeys import ApiKey
from mmrag.errors import NotFoundError
from mmrag.http.auth import allow_collection, require, services_of
from mmrag.http.schemas import ErrorBody
from mmrag.registry import check_collection_name

router = APIRouter(tags=["lifecycle"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 503)}


class ProbeOut(BaseModel):
    """A probe: a query and the documents it must find in its top k."""

    name: str
    query: str
    expect: list[str]
    k: int
    created_at: float


class ProbeResultOut(BaseModel):
    """One probe's outcome in a round."""

    name: str
    passed: bool = Field(description="Every expected document was in the top k.")
    recall: float = Field(description="Share of the expected documents found in the top k.")
    found: list[str]
    missing: list[str]
    latency_ms: float
    error: str | None = Field(None, description="Why the search failed (the probe then has recall 0).")


class ProbeRoundOut(BaseModel):
    """The server's last probe round of one version."""

    version: str = Field(description="The version's label, kb@N.")
    at: float = Field(description="When it ran (seconds since the epoch).")
    recall: float | None = Field(description="Mean recall over the probes.")
    failed: list[str]
    p50_latency_ms: float
    max_latency_ms: float
    results: list[ProbeResultOut]


class ProbesResponse(BaseModel):
    """A knowledge base's probes and the last round of each of its versions this server probed."""

    collection: str
    probes: list[ProbeOut]
    interval_minutes: float = Field(description="How often the server probes (0: it does not).")
    last_runs: list[ProbeRoundOut]


@router.get("/v1/collections/{collection}/probes", response_model=ProbesResponse, responses=ERRORS)
def list_probes(collection: str, request: Request, key: ApiKey | None = Depends(require("read"))) -> ProbesResponse:
    """The probes of a knowledge base (shared by all its versions) and the server's last results."""
    from mmrag.lifecycle.versions import split_label

    services = services_of(request)
    kb = allow_collection(key, check_collection_name(split_label(collection)[0]))
    monitor = getattr(services, "prober", None)
    if monitor is None:  # the app's lifespan has not started the services (it always does under a server)
        services.start()
        monitor = services.prober
    probes = monitor.store.list(kb)
    if not probes and not monitor.versions.list(kb):
        raise NotFoundError(f"no collection {kb!r}; upload documents to it first (POST /v1/documents)")
    rounds = [ProbeRoundOut(version=run.version, **_round(run.report.to_dict())) for run in monitor.last(kb)]
    return ProbesResponse(collection=kb, probes=[ProbeOut(**p.to_dict()) for p in probes],
                          interval_minutes=services.settings.lifecycle.probe_interval_minutes, last_runs=rounds)


def _round(data: dict[str, Any]) -> dict[str, Any]:
    return {"at": data["at"], "recall": data["recall"], "failed": data["failed"],
            "p50_latency_ms": data["p50_latency_ms"], "max_latency_ms": data["max_latency_ms"],
            "results": [ProbeResultOut(**r) for r in data["results"]]}
