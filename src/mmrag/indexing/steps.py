"""The work of ingestion that needs no store: read a file, chunk it, embed it.

These steps run wherever the work runs: in the ingesting process (engine ``local``) or in Ray
workers (engine ``ray``, :mod:`mmrag.indexing.ray`). They read files and run models; they never open
the manifest or a store, and everything they take and return pickles. The driver,
:class:`mmrag.indexing.Indexer`, plans the work from the manifest (:class:`FileTask`), and applies
what comes back (:class:`FileResult`, :class:`Prepared`) through the one write protocol, so both
engines end in the same state.

One file's work: :func:`load_file` hashes it (unless its size and mtime say the recorded hash
still holds), skips it when the manifest already has that version, and otherwise loads and chunks
it into :class:`LoadedDoc` items, ending with a :class:`FileResult`. :func:`embed_documents` turns
loaded documents into :class:`Prepared` documents: their records with vectors, ready to write.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from mmrag.chunking import SentenceChunker
from mmrag.errors import LoadError
from mmrag.loaders import FileRef, JsonlFields, LoaderLimits, RecordProblem, file_sha256, load_iter
from mmrag.redaction import Redactor
from mmrag.sources import ObjectRef, SourceAccessError, SourceNotFoundError, download, object_stamp
from mmrag.tracing import start_span
from mmrag.types import Chunk, Document, ImageAsset, Record, record_id


#: Texts per embedder call. A server runs one forward pass at a time per model, shared by every
#: request; a long document's thousands of chunks in one call kept a 60-byte upload (and every
#: search) waiting until all were done. Calls of one model batch let them in between.
EMBED_SLICE = 32


class Embedders(Protocol):
    """Where :func:`embed_documents` gets its models (a knowledge base, or a Ray actor's own)."""

    @property
    def clip(self) -> Any: ...

    @property
    def text(self) -> Any: ...


@dataclass(frozen=True)
class FileTask:
    """One file to look at, with what the manifest knows of it (planned by the driver).

    Attributes:
        ref: the file (or an object in object storage, :class:`~mmrag.sources.ObjectRef`).
        digest: its sha256 when its size and mtime match the recorded stamp, else ``""`` (hash it).
        state_hash: the content hash of the file's manifest row (not for JSONL), if any.
        state_status: that row's status.
        known: for a JSONL file, the content hash of each of its records already ``done``.
    """

    ref: FileRef | ObjectRef
    digest: str = ""
    state_hash: str | None = None
    state_status: str | None = None
    known: Mapping[str, str] = field(default_factory=dict)


@dataclass
class FileResult:
    """The end of one file's work: what the driver records besides the file's documents.

    Attributes:
        digest: the file's sha256 (``""`` when it could not be read).
        stamp: ``(size, mtime_ns)`` when the file was hashed in this run (the driver records it).
        unchanged_file: the file's manifest row already has this version (nothing was loaded).
        unchanged: JSONL records whose version is already ``done``.
        seen: those unchanged JSONL records' ids (changed ones arrive as documents).
        problems: a JSONL file's bad lines.
        error: why the file did not load (``None`` if it did).
        skipped: ``error`` is a skip (nothing indexable), not a failure.
        loaded: documents loaded (changed or not).
    """

    ref: FileRef | ObjectRef
    digest: str = ""
    stamp: tuple[int, int] | None = None
    unchanged_file: bool = False
    unchanged: int = 0
    seen: list[str] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    loaded: int = 0


@dataclass(frozen=True)
class LoadedDoc:
    """A changed document, loaded and chunked, waiting for its embeddings.

    ``stamp`` is its file's ``(size, mtime_ns)`` before it was read (``None`` for JSONL records):
    the writer drops the document if the file changed since (another run indexes what it read).
    """

    doc: Document
    chunks: tuple[Chunk, ...]
    stamp: tuple[int, int] | None = None

    @property
    def items(self) -> int:
        """What it costs to embed: chunks plus images."""
        return len(self.chunks) + len(self.doc.images)


@dataclass
class Prepared:
    """A document embedded and ready to write: its records for the joint space and the text model.

    Vectors travel as one float32 matrix per index (cheap to pickle); :meth:`clip_records` and
    :meth:`text_records` build the store records.
    """

    doc_id: str
    source: str
    doc_type: str
    content_hash: str
    stats: Mapping[str, float]
    clip_ids: list[str]
    clip_metas: list[dict[str, Any]]
    clip_texts: list[str | None]
    clip_vecs: np.ndarray
    text_ids: list[str]
    text_metas: list[dict[str, Any]]
    text_texts: list[str]
    text_vecs: np.ndarray
    failure: str | None = None  # an image file that did not decode: the document failed
    warnings: list[str] = field(default_factory=list)
    clip_computed: int = 0
    text_computed: int = 0
    stamp: tuple[int, int] | None = None  # the file's (size, mtime_ns) when it was read (LoadedDoc.stamp)

    # Each record's vector is a row of the float32 matrix, not a list: the store stacks the rows
    # again, and a round trip through Python floats cost a 10k bulk build 0.5 s of its 3.8 s own work.
    def clip_records(self) -> list[Record]:
        return [Record(i, v, m, t) for i, m, t, v in zip(self.clip_ids, self.clip_metas, self.clip_texts, self.clip_vecs)]

    def text_records(self) -> list[Record]:
        return [Record(i, v, m, t) for i, m, t, v in zip(self.text_ids, self.text_metas, self.text_texts, self.text_vecs)]


def load_file(task: FileTask, chunker: SentenceChunker, *, jsonl: JsonlFields, limits: LoaderLimits,
              redactor: Redactor | None = None) -> Iterator[LoadedDoc | FileResult]:
    """Yield the changed documents of one file, then its :class:`FileResult` (always last).

    With a ``redactor``, each document is scrubbed before it is chunked (see :mod:`mmrag.redaction`).
    """
    # A generator: its span must not become current, or the caller's spans would nest under it.
    trace = start_span("ingest.load", file=str(task.ref.path), suffix=task.ref.suffix)
    try:
        for item in _load_file(task, chunker, jsonl, limits, redactor):
            if isinstance(item, FileResult):
                trace.set_attributes(documents=item.loaded, unchanged=item.unchanged + item.unchanged_file,
                                     failed=item.error is not None)
            yield item
    finally:
        trace.end()


def _load_file(task: FileTask, chunker: SentenceChunker, jsonl: JsonlFields, limits: LoaderLimits,
               redactor: Redactor | None = None) -> Iterator[LoadedDoc | FileResult]:
    if isinstance(task.ref, ObjectRef):  # in object storage: copied to a temporary file, then loaded as one
        yield from _load_object(task, lambda local: _load_file(local, chunker, jsonl, limits, redactor), limits)
        return
    ref = task.ref
    result = FileResult(ref, digest=task.digest)
    stamp: tuple[int, int] | None = None
    try:
        try:
            stamp = _stat(ref)
            if not result.digest:
                result.digest = file_sha256(ref.path)
                result.stamp = stamp
        except OSError as exc:
            raise LoadError(str(ref.path), f"cannot read file: {exc.strerror or exc}") from exc
        is_jsonl = ref.suffix == ".jsonl"
        if not is_jsonl and task.state_hash == result.digest and task.state_status not in (None, "pending"):
            result.unchanged_file = True
            yield result
            return
        for item in load_iter(ref, content_hash=result.digest, jsonl=jsonl, limits=limits):
            if isinstance(item, RecordProblem):
                result.problems.append(item)
                continue
            result.loaded += 1
            if is_jsonl and task.known.get(item.doc_id) == item.content_hash:
                result.unchanged += 1
                result.seen.append(item.doc_id)
                continue
            if redactor:
                # Before chunking: no chunk, vector or keyword row is ever made from the raw text.
                item = redactor.redact_document(item)
            yield LoadedDoc(item, tuple(chunker.chunk(item.doc_id, item.texts)), None if is_jsonl else stamp)
    except LoadError as exc:
        result.error, result.skipped = exc.reason, bool(getattr(exc, "skipped", False))
    yield result


def _stat(ref: FileRef) -> tuple[int, int]:
    import os

    st = os.stat(ref.path)
    return st.st_size, st.st_mtime_ns


def embed_documents(loaded: Sequence[LoadedDoc], models: Embedders) -> list[Prepared]:
    """Embed the chunks (both models) and images (CLIP) of ``loaded``; one :class:`Prepared` each.

    An image that does not decode fails its document when the document is that image, and is left
    out with a warning when it sits inside another document.
    """
    if not loaded:
        return []
    chunks = [c for d in loaded for c in d.chunks]
    texts = [c.text for c in chunks]
    clip_text = _embed_texts(models.clip, texts) if texts else None
    text_vecs = _embed_texts(models.text, [c.embed_text for c in chunks]) if texts else None

    images = [(n, a) for n, d in enumerate(loaded) for a in d.doc.images]
    labels = [_image_label(loaded[n].doc, a) for n, a in images]
    image_vecs: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}
    warnings: dict[int, list[str]] = {}
    if images:
        for i, vec in models.clip.iter_image_embeddings([a for _, a in images], labels):
            n = images[i][0]
            if isinstance(vec, LoadError):
                if loaded[n].doc.doc_type == "image":
                    failures[n] = vec.reason
                else:
                    warnings.setdefault(n, []).append(f"{labels[i]}: {vec.reason} (image left out)")
            else:
                image_vecs[i] = np.asarray(vec, dtype=np.float32)

    out: list[Prepared] = []
    pos = 0
    img_pos = 0
    for n, item in enumerate(loaded):
        d = item.doc
        k = len(item.chunks)
        metas = [_chunk_meta(d, c) for c in item.chunks]
        ids = [record_id(d.doc_id, "t", c.index) for c in item.chunks]
        bodies = [c.text for c in item.chunks]
        clip_rows = [clip_text[pos:pos + k]] if k else []  # type: ignore[index]
        clip_ids, clip_metas = list(ids), list(metas)
        clip_texts: list[str | None] = list(bodies)
        computed_images = 0
        for a in d.images:
            vec = image_vecs.get(img_pos)
            img_pos += 1
            if vec is None:
                continue
            computed_images += 1
            if n in failures:
                continue
            clip_ids.append(record_id(d.doc_id, "i", a.index))
            clip_metas.append(_image_meta(d, a))
            clip_texts.append(None)
            clip_rows.append(vec[None, :])
        dim = models.clip.dim
        out.append(Prepared(
            doc_id=d.doc_id, source=d.source, doc_type=d.doc_type, content_hash=d.content_hash, stats=dict(d.stats),
            clip_ids=clip_ids, clip_metas=clip_metas, clip_texts=clip_texts,
            clip_vecs=np.concatenate(clip_rows).astype(np.float32) if clip_rows else np.zeros((0, dim), np.float32),
            text_ids=ids, text_metas=metas, text_texts=bodies,
            text_vecs=(np.asarray(text_vecs[pos:pos + k], dtype=np.float32) if k  # type: ignore[index]
                       else np.zeros((0, models.text.dim), np.float32)),
            failure=failures.get(n), warnings=warnings.get(n, []),
            clip_computed=k + computed_images, text_computed=k, stamp=item.stamp,
        ))
        pos += k
    return out


def _embed_texts(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """``embedder.embed_texts`` a slice of :data:`EMBED_SLICE` texts at a time."""
    if len(texts) <= EMBED_SLICE:
        return np.asarray(embedder.embed_texts(texts))
    return np.concatenate([np.asarray(embedder.embed_texts(texts[lo:lo + EMBED_SLICE]))
                           for lo in range(0, len(texts), EMBED_SLICE)])


def _image_label(doc: Document, asset: ImageAsset) -> str:
    if doc.doc_type == "image":
        return doc.source
    where = f"page={asset.page}," if asset.page is not None else ""
    return f"{doc.source}#{where}image={asset.index}"


def _base_meta(doc: Document) -> dict[str, Any]:
    meta: dict[str, Any] = {"doc_id": doc.doc_id, "source": doc.source, "doc_type": doc.doc_type}
    for key, value in doc.metadata.items():
        if isinstance(value, (str, int, float, bool)) and key not in meta:
            meta[key] = value
    return meta


def _chunk_meta(doc: Document, chunk: Chunk) -> dict[str, Any]:
    meta = {**_base_meta(doc), **chunk.metadata, "modality": "text", "chunk": chunk.index,
            "start": chunk.start, "end": chunk.end}
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta


def _image_meta(doc: Document, asset: ImageAsset) -> dict[str, Any]:
    meta = {**_base_meta(doc), "modality": "image", "image_index": asset.index}
    if asset.page is not None:
        meta["page"] = asset.page
    if asset.name:
        meta["image_name"] = asset.name
    return meta


# -- objects in object storage (mmrag.sources) -----------------------------------------------------
def _load_object(task: FileTask, load_local: Callable[[FileTask], Iterator[LoadedDoc | FileResult]],
                 limits: LoaderLimits) -> Iterator[LoadedDoc | FileResult]:
    """Yield the changed documents of one object, then its ``FileResult``, as for a file.

    The object is copied to a private temporary file (:func:`mmrag.sources.download`), loaded as a
    file, and deleted; its documents take the object's URL as their source, and images they point
    to are read into memory first (bounded like the object), since the file is gone by the time
    they are embedded.

    Raises:
        SourceUnreachableError: the store stopped answering; the run stops (what it wrote is kept).
    """
    ref: ObjectRef = task.ref  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="mmrag-object-") as tmp:
        local = Path(tmp) / f"object{ref.suffix}"
        try:
            digest, size, etag = download(ref, local, limits.max_file_bytes)
        except SourceNotFoundError:
            yield FileResult(ref, error="the object no longer exists (deleted since it was listed); rerun with "  # type: ignore[arg-type]
                                        "--prune to drop it")
            return
        except SourceAccessError as exc:
            yield FileResult(ref, error=f"cannot read the object: {exc}")  # type: ignore[arg-type]
            return
        except LoadError as exc:
            yield FileResult(ref, error=exc.reason)  # type: ignore[arg-type]
            return
        inner = FileTask(FileRef(local, Path(tmp), ref.doc_id, ref.suffix), digest, task.state_hash,
                         task.state_status, task.known)
        stamp = object_stamp(size, etag)
        for item in load_local(inner):
            if isinstance(item, FileResult):
                yield _object_result(item, ref, str(local), stamp)
            else:
                yield _object_document(item, ref.path, str(local))


def _object_result(result: FileResult, ref: ObjectRef, local: str, stamp: tuple[int, int]) -> FileResult:
    return dataclasses.replace(
        result, ref=ref, stamp=stamp, error=result.error.replace(local, ref.path) if result.error else result.error,
        problems=[dataclasses.replace(p, source=ref.path) for p in result.problems])


def _object_document(item: LoadedDoc, url: str, local: str) -> LoadedDoc:
    doc = item.doc
    # The image documents' assets point at the temporary file, which is gone before they are embedded.
    images = tuple(dataclasses.replace(a, data=a.read_bytes(), path=None) if a.path == local else a for a in doc.images)
    metadata = {k: (url if v == local else v) for k, v in doc.metadata.items()}
    # No stamp: the writer's "changed while it was read" check stats a local file (an object's
    # next run sees a new ETag and indexes the new version).
    return dataclasses.replace(item, doc=dataclasses.replace(doc, source=url, images=images, metadata=metadata),
                               stamp=None)
