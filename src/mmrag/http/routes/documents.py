"""Write routes: upload documents (through the same ingestion path as the CLI), delete them, list and drop collections.

Uploaded files are kept under ``<data_dir>/uploads/<collection>/``, named by their upload name
reduced to a safe base name; the doc id is that name, so uploading the same name again replaces
the document (and an unchanged file is skipped, as with ``mmrag ingest``).

The stored file is what image hits are re-read from, so a new version must not replace it unless
it loads: each upload is written to a hidden temporary file in the same folder first, and a
re-upload that differs from the stored file is loaded from there before it replaces anything. If
it fails to load, the stored file and its indexed records stay, and the response lists the
failure. (The Indexer takes paths and names documents after them, so it cannot index the
temporary file under the final name; a re-upload that loads is therefore parsed twice.)
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from mmrag.http.apikeys import ApiKey
from mmrag.errors import InvalidInputError, LoadError, NotFoundError, PayloadTooLargeError, UnsupportedMediaTypeError
from mmrag.http import access as access_log
from mmrag.http.auth import allow_collection, caller_of, require, services_of
from mmrag.http.routes.query import ERRORS
from mmrag.http.schemas import COLLECTION_PATTERN, CollectionList, CollectionOut, DeleteResponse, UploadResponse
from mmrag.http.services import Services
from mmrag.indexing import Indexer, IngestSummary, Problem, ingest_limits
from mmrag.lifecycle.promotion import ingest_on_live_version, on_live_version
from mmrag.loaders import SUPPORTED_SUFFIXES, FileRef, file_sha256, load
from mmrag.registry import check_collection_name

router = APIRouter(tags=["documents"])
_UNSAFE = re.compile(r"[\x00-\x1f\x7f<>:\"|?*]")
_CHUNK = 1024 * 1024


@router.post("/v1/documents", response_model=UploadResponse, status_code=201,
             responses={**ERRORS, 415: {"model": ERRORS[400]["model"]}})
async def upload(request: Request, files: list[UploadFile] = File(..., description="One or more files."),
                 collection: str | None = Form(None, pattern=COLLECTION_PATTERN),
                 redact: str | None = Form(None, description="Redaction policy, as `mmrag ingest --redact` "
                                           "(email,phone,iban,card,ip or none); default: the collection's own."),
                 access: str | None = Form(None, description="Access labels for these documents: "
                                           "group:NAME or user:NAME, comma-separated."),
                 key: ApiKey | None = Depends(require("write"))) -> UploadResponse:
    """Upload files and index them; the response is the ingestion summary."""
    from mmrag.redaction import check_policy, parse_policy
    from mmrag.security.rules import AccessRules

    services = services_of(request)
    rules = AccessRules(labels=[access] if access else ())
    name = allow_collection(key, check_collection_name(collection or services.settings.collection))
    policy = parse_policy(redact) if redact is not None else None
    if len(files) > 100:
        raise InvalidInputError("files: at most 100 files per request")
    limit = int(services.settings.api.max_upload_mb * 1024 * 1024)
    folder = upload_dir(services, name)
    checked = [(f, safe_name(f.filename or "")) for f in files]
    for _, filename in checked:
        if Path(filename).suffix.lower() not in SUPPORTED_SUFFIXES:
            raise UnsupportedMediaTypeError(
                f"{filename}: mmrag cannot ingest '{Path(filename).suffix or 'no suffix'}' files; supported: "
                f"{', '.join(sorted(SUPPORTED_SUFFIXES))}")
    if len({n for _, n in checked}) != len(checked):
        raise InvalidInputError("files: two uploads reduce to the same file name")
    staged: list[tuple[Path, Path]] = []
    refused: list[Problem] = []
    try:
        for upload_file, filename in checked:
            staged.append((await _stage(upload_file, folder, filename, limit), folder / filename))
        kb = await run_in_threadpool(services.kb, name, create=True)
        # Refused before any upload replaces a stored file (the write checks again under its lock).
        check_policy(kb.manifest, kb.collection, policy, kb_name=name)
        indexer = Indexer(kb, limits=ingest_limits(services.settings), access=rules)  # the per-document budgets
        paths = []
        for tmp, dest in staged:
            problem = await run_in_threadpool(_replaces_cleanly, indexer, tmp, dest)
            if problem is not None:
                refused.append(problem)
            elif tmp.exists():  # else it equalled the stored file, which stays (with its file stamp)
                os.replace(tmp, dest)
            paths.append(dest)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    to_index = [p for p in paths if str(p) not in {r.path for r in refused}]
    # The write goes to the version live each time it takes the writer lock (a promote may switch meanwhile).
    summary = (await run_in_threadpool(lambda: ingest_on_live_version(
        name, kb, lambda live, guard: Indexer(live, limits=indexer.limits, guard=guard, redact=policy,
                                              access=rules).ingest(to_index),
        resolve=services.physical,
        open_kb=lambda n: services.kb(n, create=True))) if to_index else IngestSummary(collection=name))
    services.metrics.ingested.labels(name).inc(summary.indexed)
    access_log.note(request.scope, collection=name, written_doc_ids=[p.name for p in to_index])
    summary.failed[:0] = [r for r in refused if r.status == "failed"]
    summary.skipped[:0] = [r for r in refused if r.status == "skipped"]
    data = summary.to_dict()
    return UploadResponse(collection=name, doc_ids=[p.name for p in paths], indexed=summary.indexed,
                          unchanged=summary.unchanged, failed=data["failed"], skipped=data["skipped"],
                          redact=list(summary.redact), redactions=summary.redactions)


@router.delete("/v1/documents/{doc_id:path}", response_model=DeleteResponse, responses=ERRORS)
def delete(doc_id: str, request: Request, collection: str | None = None,
           key: ApiKey | None = Depends(require("write"))) -> DeleteResponse:
    """Delete a document from every index (and its uploaded file, if it was uploaded)."""
    services = services_of(request)
    name = allow_collection(key, check_collection_name(collection or services.settings.collection))
    kb = services.kb(name)
    _check_readable(services, kb, key, doc_id, name)
    if on_live_version(name, kb, lambda live: Indexer(live).delete([doc_id]), resolve=services.physical,
                       open_kb=services.kb) == 0:
        raise NotFoundError(f"no document {doc_id!r} in collection {name!r}")
    access_log.note(request.scope, collection=name, written_doc_ids=[doc_id])
    folder = upload_dir(services, name)
    uploaded = folder / doc_id
    if "/" not in doc_id and uploaded.is_file() and uploaded.parent == folder:
        uploaded.unlink()
    return DeleteResponse(collection=name, doc_id=doc_id, deleted=True)


@router.get("/v1/collections", response_model=CollectionList, responses=ERRORS)
def collections(request: Request, key: ApiKey | None = Depends(require("read"))) -> CollectionList:
    """The collections this key may read, with their sizes."""
    services = services_of(request)
    out = []
    for name in services.collections():
        if key is None or key.sees(name):
            out.append(CollectionOut(name=name, **services.collection_sizes(name, caller_of(key))))
    return CollectionList(collections=out)


@router.delete("/v1/collections/{collection}", response_model=CollectionOut, responses=ERRORS)
def drop_collection(collection: str, request: Request, key: ApiKey | None = Depends(require("admin"))) -> CollectionOut:
    """Delete a whole collection (all three indexes, its manifest rows and uploaded files)."""
    import shutil

    services = services_of(request)
    name = allow_collection(key, check_collection_name(collection))
    if name not in services.collections():
        raise NotFoundError(f"no collection {name!r}")
    sizes = services.collection_sizes(name)
    services.drop(name)
    shutil.rmtree(upload_dir(services, name, create=False), ignore_errors=True)
    return CollectionOut(name=name, **sizes)


# -- helpers ----------------------------------------------------------------------------------------
def _check_readable(services: Services, kb: Any, key: ApiKey | None, doc_id: str, name: str) -> None:
    """A key may change only documents it may read; any other is "not found", as if it did not exist."""
    from mmrag.security.labels import can_read, label_metadata
    from mmrag.security.rules import LabelTable

    caller = caller_of(key)
    if caller is None or caller.unrestricted:
        return
    labels = LabelTable(kb.manifest).get(kb.collection, [doc_id]).get(doc_id, ())
    if not can_read(caller, label_metadata(labels), services.settings.access.unlabelled):
        raise NotFoundError(f"no document {doc_id!r} in collection {name!r}")


def safe_name(filename: str) -> str:
    """Reduce an upload's file name to a safe base name, or refuse it.

    Whatever the client sends (``../../etc/passwd``, ``C:\\x\\y.pdf``, ``/abs/path``), only the last
    path component survives, stripped of control and reserved characters.

    Raises:
        InvalidInputError: nothing usable is left.
    """
    base = PureWindowsPath(PurePosixPath(filename).name).name
    base = unicodedata.normalize("NFC", _UNSAFE.sub("", base)).strip().lstrip(".")
    if not base or base in {".", ".."} or len(base.encode()) > 200:
        raise InvalidInputError(f"files: unusable file name {filename!r}; send a plain name such as report.pdf")
    return base


def upload_dir(services: Services, collection: str, *, create: bool = True) -> Path:
    """``<data_dir>/uploads/<collection>``, resolved."""
    folder = (Path(services.data_dir) / "uploads" / collection).resolve()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _replaces_cleanly(indexer: Indexer, tmp: Path, dest: Path) -> Problem | None:
    """Whether the staged upload ``tmp`` may replace the stored ``dest``; a :class:`Problem` if not.

    A new name, or a JSONL file, is left to the Indexer as before: there is no indexed version to
    protect, or its records do not come back from the file (JSONL holds no images, and ``load``
    would refuse a whole file the Indexer indexes line by line). A file equal to the stored one
    is dropped here, so the stored one keeps its stamp.
    """
    if not dest.exists() or dest.suffix.lower() == ".jsonl":
        return None
    if file_sha256(tmp) == file_sha256(dest):
        tmp.unlink()
        return None
    ref = FileRef(path=tmp, root=dest.parent, doc_id=dest.name, suffix=dest.suffix.lower())
    try:
        load(ref, content_hash="", jsonl=indexer.jsonl, limits=indexer.limits)
    except LoadError as exc:
        reason = f"{exc.reason}; the previous version is kept (the upload was not stored)"
        return Problem(str(dest), reason, "skipped" if exc.skipped else "failed")
    return None


async def _stage(upload_file: UploadFile, folder: Path, filename: str, limit: int) -> Path:
    dest = (folder / filename).resolve()
    if dest.parent != folder:  # belt and braces: safe_name already made this impossible
        raise InvalidInputError(f"files: {filename!r} would leave the upload folder")
    # Hidden (folder walks skip it) and with the real suffix (loaders choose by it).
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=dest.suffix)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload_file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"{filename}: over the upload limit of {limit / 1024 / 1024:.1f} MiB")
                out.write(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if size == 0:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidInputError(f"{filename}: the file is empty")
    return Path(tmp)
