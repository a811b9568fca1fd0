"""Read routes the knowledge-base UI lists from: a collection's documents, one document's chunks, eval reports.

Documents come from the manifest (status, failure reason, chunk and image counts) plus, for the
page of documents shown, the pages whose text came from OCR (read from the text index's metadata,
so only for that page). A document's chunks are its records in both indexes, in reading order.
Evaluation reports are the ``report.json`` files under ``<data_dir>/reports/`` (one folder per
run, as ``mmrag eval run DATASET --out <data_dir>/reports/NAME`` writes them); a report names no
collection, so only a key that sees every collection may list them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from mmrag.http.apikeys import ApiKey
from mmrag.errors import ForbiddenError, NotFoundError
from mmrag.http import access
from mmrag.http.auth import allow_collection, require, services_of
from mmrag.http.routes.query import ERRORS
from mmrag.http.services import Services
from mmrag.lifecycle.versions import split_label
from mmrag.manifest import DocState

router = APIRouter(tags=["catalog"])
#: The manifest's states as the API names them (``done`` reads ``indexed``, as ``mmrag documents`` shows it).
STATUSES = {"indexed": "done", "failed": "failed", "pending": "pending", "skipped": "skipped"}
_SHOWN = {v: k for k, v in STATUSES.items()}
Status = Literal["indexed", "failed", "pending", "skipped"]
#: Evaluation reports are read from here, under the data dir.
REPORTS_DIR = "reports"
_MAX_REPORTS = 200


class DocumentOut(BaseModel):
    """One document and how its ingestion went."""

    doc_id: str = Field(description="What `DELETE /v1/documents/{doc_id}` and `mmrag delete` take.")
    status: str = Field(description="indexed, failed, pending or skipped.")
    reason: str | None = Field(None, description="Why it failed or was skipped.")
    doc_type: str
    chunks: int = Field(description="Text chunks in the text index.")
    image_records: int = Field(description="Records in the CLIP index (images, rendered pages).")
    ocr_pages: int | None = Field(None, description="Pages (or images) whose text came from OCR; null when not read.")
    updated_at: float | None = Field(None, description="Last change (seconds since the epoch).")


class DocumentList(BaseModel):
    """GET /v1/collections/{collection}/documents."""

    collection: str
    version: str | None = Field(description="The version listed, kb@N.")
    counts: dict[str, int] = Field(description="Documents per status, over the whole collection.")
    total: int = Field(description="Documents matching the status filter.")
    offset: int
    documents: list[DocumentOut]


class ChunkOut(BaseModel):
    """One record of a document: a text chunk or an image."""

    id: str
    modality: str
    page: int | None = None
    text: str | None = None
    image_uri: str | None = Field(None, description="Where an image record's pixels are served.")
    metadata: dict[str, Any]


class DocumentDetail(BaseModel):
    """GET /v1/collections/{collection}/documents/{doc_id}."""

    collection: str
    document: DocumentOut
    chunks: list[ChunkOut]


class ReportOut(BaseModel):
    """A summary of one evaluation report."""

    name: str = Field(description="Its folder under `<data_dir>/reports/`.")
    dataset: str
    created: str
    counts: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = Field(description="Metric name -> mean, n, producer.")


class ReportList(BaseModel):
    """GET /v1/eval/reports."""

    folder: str = Field(description="Where reports are read from (relative to the data dir).")
    reports: list[ReportOut]
    unreadable: list[str] = Field(description="Folders whose report.json could not be read, with why.")


@router.get("/v1/collections/{collection}/documents", response_model=DocumentList, responses=ERRORS)
def documents(collection: str, request: Request, status: Status | None = None,
                    offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                    key: ApiKey | None = Depends(require("read"))) -> DocumentList:
    """A collection's documents (its live version, or ``kb@N``), by doc id: status, reason, chunks, OCR pages."""
    services = services_of(request)
    allow_collection(key, split_label(collection)[0])
    physical = _existing(services, collection)
    listing = services.manifest.listing(physical, STATUSES[status] if status else None)
    shown = listing[offset : offset + limit]
    ocr = _ocr_pages(services, collection, [d.doc_id for d, _ in shown if d.status == "done"])
    access.note(request.scope, collection=collection)
    return DocumentList(collection=split_label(collection)[0], version=services.versions.label_of(physical),
                        counts={_SHOWN.get(k, k): v for k, v in services.manifest.counts(physical).items()},
                        total=len(listing), offset=offset,
                        documents=[document_out(d, at, ocr.get(d.doc_id)) for d, at in shown])


@router.get("/v1/collections/{collection}/documents/{doc_id:path}", response_model=DocumentDetail, responses=ERRORS)
def document(collection: str, doc_id: str, request: Request,
                   key: ApiKey | None = Depends(require("read"))) -> DocumentDetail:
    """One document with its chunks and images in reading order, each with its metadata."""
    services = services_of(request)
    allow_collection(key, split_label(collection)[0])
    physical = _existing(services, collection)
    state = services.manifest.get(physical, doc_id)
    if state is None:
        raise NotFoundError(f"no document {doc_id!r} in collection {collection!r}; list them with "
                            f"GET /v1/collections/{collection}/documents")
    chunks = _chunks(services, collection, doc_id)
    access.note(request.scope, collection=collection, doc_ids=[doc_id])
    ocr = len({c.page for c in chunks if c.metadata.get("text_source") == "ocr"})
    return DocumentDetail(collection=split_label(collection)[0], document=document_out(state, None, ocr), chunks=chunks)


@router.get("/v1/eval/reports", response_model=ReportList, responses=ERRORS)
def reports(request: Request, key: ApiKey | None = Depends(require("read"))) -> ReportList:
    """Evaluation reports under ``<data_dir>/reports/``, newest first (a key that sees every collection)."""
    if key is not None and "*" not in key.collections:
        raise ForbiddenError(f"this key ({key.name or key.id}) is limited to some collections; evaluation reports "
                             "name none, so listing them needs a key for every collection")
    folder = Path(services_of(request).data_dir) / REPORTS_DIR
    found, unreadable = [], []
    paths = sorted(folder.glob("*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for path in paths[:_MAX_REPORTS]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found.append(ReportOut(
                name=path.parent.name, dataset=str(data.get("dataset", "")), created=str(data.get("created", "")),
                counts=dict(data.get("counts") or {}), config=dict(data.get("config") or {}),
                metrics={n: {k: m.get(k) for k in ("mean", "n", "producer", "higher_is_better")}
                         for n, m in dict(data.get("metrics") or {}).items() if isinstance(m, dict)}))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            unreadable.append(f"{path.parent.name}: {type(exc).__name__}: {exc}")
    return ReportList(folder=REPORTS_DIR, reports=found, unreadable=unreadable)


# -- helpers ----------------------------------------------------------------------------------------
def document_out(state: DocState, updated_at: float | None, ocr_pages: int | None) -> DocumentOut:
    """A manifest row as the API returns it."""
    return DocumentOut(doc_id=state.doc_id, status=_SHOWN.get(state.status, state.status), reason=state.reason or None,
                       doc_type=state.doc_type, chunks=state.n_text, image_records=state.n_clip,
                       ocr_pages=ocr_pages, updated_at=updated_at)


def _existing(services: Services, collection: str) -> str:
    physical = services.physical(collection)
    if not services.manifest.has_collection(physical):
        raise NotFoundError(f"no collection {collection!r}; upload documents to it first (POST /v1/documents)")
    return physical


def _ocr_pages(services: Services, collection: str, doc_ids: list[str]) -> dict[str, int]:
    """Pages per document whose text came from OCR (one indexed read of the shown documents' metadata)."""
    if not doc_ids:
        return {}
    pages: dict[str, set[Any]] = {d: set() for d in doc_ids}
    for _, meta, _ in services.kb(collection).text_store.records_of(doc_ids):
        if meta.get("text_source") == "ocr" and meta.get("doc_id") in pages:
            pages[meta["doc_id"]].add(meta.get("page"))
    return {d: len(p) for d, p in pages.items()}


def _chunks(services: Services, collection: str, doc_id: str) -> list[ChunkOut]:
    kb = services.kb(collection)
    out = []
    for store in (kb.text_store, kb.clip_store):
        for rid, meta, text in store.records_of([doc_id], include=("metadatas", "documents")):
            image = meta.get("modality") == "image"
            if store is kb.clip_store and not image:
                continue  # CLIP's copy of a text chunk: the text index holds it already
            page = meta.get("page")
            out.append(ChunkOut(
                id=rid, modality="image" if image else "text", page=int(page) if isinstance(page, (int, float)) else None,
                text=None if image else text, metadata=dict(meta),
                image_uri=f"/v1/collections/{quote(collection, safe='')}/images/{quote(rid, safe='')}" if image else None))
    return sorted(out, key=lambda c: (c.page or 0, c.modality != "text", _order(c.metadata), c.id))


def _order(meta: dict[str, Any]) -> int:
    for name in ("chunk", "chunk_index", "index", "start"):
        value = meta.get(name)
        if isinstance(value, (int, float)):
            return int(value)
    return 0
