"""Read route: a version's embedding drift against its reference (:mod:`mmrag.lifecycle.drift`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mmrag.http.apikeys import ApiKey
from mmrag.http.auth import allow_collection, require, services_of
from mmrag.http.routes.query import ERRORS
from mmrag.lifecycle.versions import split_label

router = APIRouter(tags=["lifecycle"])


class ModalityDriftOut(BaseModel):
    """The drift of one modality (``score`` is null when either side has too few vectors)."""

    modality: str
    score: float | None = Field(description="max(js, mean_distance / 2), in [0, 1]; 0: same distribution.")
    js: float | None = Field(description="Sliced Jensen-Shannon divergence (bits, bias-corrected).")
    mean_distance: float | None = Field(description="1 - cosine of the mean vectors, bias-corrected, in [0, 2].")
    n_reference: int
    n_recent: int
    note: str = ""


class DriftOut(BaseModel):
    """A version's recent documents and queries against its reference."""

    collection: str = Field(description="The knowledge base.")
    version: str = Field(description="The version scored, as kb@N.")
    threshold: float
    drifted: bool = Field(description="Whether any document score is above the threshold.")
    queries_drifted: bool = Field(description="Whether any query score is above it (a trend signal).")
    recent_documents: int
    reference_created_at: float
    documents: dict[str, ModalityDriftOut]
    queries: dict[str, ModalityDriftOut]


@router.get("/v1/collections/{collection}/drift", response_model=DriftOut, responses=ERRORS)
async def drift(request: Request, collection: str,
                recent: int | None = Query(None, ge=1, le=100_000, description="Most recent documents compared."),
                key: ApiKey | None = Depends(require("read"))) -> DriftOut:
    """Drift of ``collection`` (its live version, or ``kb@N``) per modality, computed now."""
    from mmrag.lifecycle.drift import score

    services = services_of(request)
    allow_collection(key, split_label(collection)[0])
    settings = services.settings.lifecycle
    kb = await run_in_threadpool(services.kb, collection)
    report = await run_in_threadpool(
        lambda: score(kb, recent=recent or settings.drift_recent, threshold=settings.drift_threshold,
                      queries=services.metrics.queries, label=services.versions.label_of(kb.collection)))
    data = report.to_dict()
    return DriftOut(collection=report.label.rsplit("@", 1)[0], version=report.label, threshold=report.threshold,
                    drifted=report.drifted, queries_drifted=report.queries_drifted,
                    recent_documents=report.recent_documents, reference_created_at=report.reference_created_at,
                    documents=data["documents"], queries=data["queries"])
