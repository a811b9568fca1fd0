"""Versions of a knowledge base (read), and promote and rollback (admin key).

``promote`` runs the same canary as ``mmrag promote`` (:mod:`mmrag.lifecycle.promotion`) in this
process, so it also works on the embedded store that the server holds; a refused canary is
``409 canary_refused`` with the gate's figures in the message. The switch takes effect for every
server on the data dir at its next request. Both take the knowledge base's lifecycle lock, as the
CLI's do, so a switch here and a ``mmrag versions prune`` elsewhere never interleave.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from mmrag.http.apikeys import ApiKey
from mmrag.http.auth import allow_collection, require, services_of
from mmrag.http.routes.query import ERRORS
from mmrag.lifecycle.versions import MAX_VERSION
from mmrag.registry import check_collection_name

router = APIRouter(tags=["lifecycle"])


class VersionOut(BaseModel):
    """One version of a knowledge base."""

    label: str = Field(description="`kb@N`.")
    version: int
    physical: str = Field(description="The collection that holds it.")
    state: str = Field(description="building, ready or failed.")
    live: bool
    created_at: float
    settings: dict[str, Any] = Field(description="What it was built with (chunk size, models, identities).")
    figures: dict[str, Any] = Field(description="Its last probe, canary and evaluation figures.")


class VersionList(BaseModel):
    """GET /v1/collections/{collection}/versions."""

    collection: str
    live: str | None
    versions: list[VersionOut]
    events: list[dict[str, Any]] = Field(description="Promotes, rollbacks, overrides and prunes, newest first.")


class PromoteRequest(BaseModel):
    """POST /v1/collections/{collection}/promote."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)
    force: bool = Field(False, description="Switch even if the canary refuses (logged).")


class SwitchOut(BaseModel):
    """The alias after a promote or a rollback."""

    collection: str
    live: str
    previous: str | None
    forced: bool = False
    canary: dict[str, Any] | None = None


def _name(key: ApiKey | None, collection: str) -> str:
    return allow_collection(key, check_collection_name(collection))


@router.get("/v1/collections/{collection}/versions", response_model=VersionList, responses=ERRORS)
def versions(collection: str, request: Request, key: ApiKey | None = Depends(require("read"))) -> VersionList:
    """The versions of a knowledge base, which one is live, and the audit log of switches."""
    from mmrag.errors import NotFoundError

    name = _name(key, collection)
    vs = services_of(request).versions
    listed = vs.list(name)
    if not listed:
        raise NotFoundError(f"no collection {name!r}")
    live = next((v.label for v in listed if v.live), None)
    return VersionList(collection=name, live=live, events=vs.events(name, 20),
                       versions=[VersionOut(**{k: v for k, v in x.to_dict().items() if k != "kb"}) for x in listed])


@router.post("/v1/collections/{collection}/promote", response_model=SwitchOut, responses=ERRORS)
def promote(collection: str, body: PromoteRequest, request: Request,
            key: ApiKey | None = Depends(require("admin"))) -> SwitchOut:
    """Make a version live if the canary passes (admin key)."""
    from mmrag.lifecycle.promotion import promote as run

    services = services_of(request)
    name = _name(key, collection)
    result = run(name, body.version, versions=services.versions, open_kb=services.kb, settings=services.settings,
                 force=body.force)
    return SwitchOut(collection=name, live=result.live.label,
                     previous=result.previous.label if result.previous else None, forced=result.forced,
                     canary=result.canary.to_dict() if result.canary is not None else None)


@router.post("/v1/collections/{collection}/rollback", response_model=SwitchOut, responses=ERRORS)
def rollback(collection: str, request: Request, key: ApiKey | None = Depends(require("admin"))) -> SwitchOut:
    """Return a knowledge base to its previous live version (admin key)."""
    from mmrag.lifecycle.promotion import rollback as run

    name = _name(key, collection)
    services = services_of(request)
    previous, live = run(name, versions=services.versions, open_kb=lambda label: services.kb(label, create=True),
                            detail={"via": "http"})
    return SwitchOut(collection=name, live=live.label, previous=previous)

