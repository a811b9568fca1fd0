"""Access-label routes: read and change a document's labels (a metadata write, never a re-embed).

Changing labels needs the ``admin`` scope: a ``write`` key may upload documents, but relabelling
decides who reads what. Reading a document's labels needs ``read`` and the right to read the
document; one the key may not read is a 404, exactly like a document that does not exist.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from mmrag.http.apikeys import ApiKey
from mmrag.errors import NotFoundError
from mmrag.http.auth import allow_collection, caller_of, require, services_of
from mmrag.http.routes.query import ERRORS
from mmrag.http.schemas import AccessOut, AccessRequest
from mmrag.lifecycle.promotion import on_live_version
from mmrag.registry import check_collection_name
from mmrag.security.labels import can_read, label_metadata
from mmrag.security.rules import LabelTable

router = APIRouter(tags=["documents"])


@router.put("/v1/documents/{doc_id:path}/access", response_model=AccessOut, responses=ERRORS)
async def set_access(doc_id: str, body: AccessRequest, request: Request,
                     key: ApiKey | None = Depends(require("admin"))) -> AccessOut:
    """Give a document exactly these labels in every index (its vectors and text are untouched)."""
    from mmrag.security.relabel import set_labels

    services = services_of(request)
    name = allow_collection(key, check_collection_name(body.collection or services.settings.collection))
    kb = await run_in_threadpool(services.kb, name)
    done = await run_in_threadpool(lambda: on_live_version(
        name, kb, lambda live: set_labels(live, doc_id, body.labels), resolve=services.physical, open_kb=services.kb))
    return AccessOut(collection=name, doc_id=doc_id, labels=list(done["labels"]), records=int(done["records"]))


@router.get("/v1/documents/{doc_id:path}/access", response_model=AccessOut, responses=ERRORS)
def get_access(doc_id: str, request: Request, collection: str | None = None,
               key: ApiKey | None = Depends(require("read"))) -> AccessOut:
    """A document's labels (404 when it does not exist or this key may not read it)."""
    services = services_of(request)
    name = allow_collection(key, check_collection_name(collection or services.settings.collection))
    kb = services.kb(name)
    state = kb.manifest.get(kb.collection, doc_id)
    labels = LabelTable(kb.manifest).get(kb.collection, [doc_id]).get(doc_id, ())
    if state is None or state.status != "done" or not can_read(caller_of(key), label_metadata(labels),
                                                                 services.settings.access.unlabelled):
        raise NotFoundError(f"no document {doc_id!r} in collection {name!r}")
    return AccessOut(collection=name, doc_id=doc_id, labels=list(labels))
