"""Consistent, checksummed snapshots of one knowledge base version, and their restore.

A snapshot is taken under the collection's writer lock, which every writer (ingest, delete, the
keyword index, uploads) takes, so the manifest rows, the Chroma records and the keyword index in
it are of one instant. It is written into a hidden sibling folder and renamed into place at the
end, so a crash never leaves a partial snapshot that looks complete.

Format (``format_version`` 1), a folder::

    snapshot.json                 format, mmrag version, source kb/label, record counts, every file's
                                  sha256 and size, a digest of snapshot.json itself, and its
                                  signature: an HMAC under the data dir's key (mmrag.lifecycle.signing)
    manifest/documents.jsonl      the collection's document rows (status, hashes, record counts)
    manifest/files.jsonl          file stamps (size, mtime, sha256) of its sources
    manifest/flags.jsonl          per-collection flags
    manifest/drift_refs.jsonl     drift reference rows, if any
    manifest/probes.jsonl         the knowledge base's probes
    manifest/roots.jsonl          the folders its documents were ingested from (mmrag.lifecycle.roots)
    chroma/<role>/collection.json Chroma collection name, metadata (embedding identity, owner), space
    chroma/<role>/NNNNN.jsonl     one line per record: id, metadata, document
    chroma/<role>/NNNNN.npy       the same records' vectors, float32 (n, dim), in the same order
    keyword/...                   the tantivy keyword index folder, as it was

``<role>`` is ``clip``, ``image`` or ``text`` (the three Chroma collections of a knowledge base),
so a restore under another name maps each onto that name's collection. Records are streamed
:data:`BATCH` at a time both ways: a snapshot of 1M records never holds them all in memory.
Vectors are saved exactly as Chroma returns them; writing them back, Chroma 1.5.9 (cosine space)
can move a float32 by an ulp or two (measured here: at most 3e-8 on unit vectors), so a restored
vector equals the snapshot's to about 1e-7, not always bit for bit.

Restore treats the folder as hostile input. Before it creates anything it checks the signature,
every checksum and size, and that the folder holds nothing but listed regular files of bounded
size and array shape (:mod:`mmrag.lifecycle.snapfiles`); then it reads only those files. It refuses a
name that exists, and removes everything it created when a step or the final count check fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mmrag import __version__
from mmrag.embedders.openclip import ClipSpec
from mmrag.errors import InvalidInputError, MmragError, NotFoundError, StoreDamagedError, StoreError
from mmrag.kb import LOCK_TIMEOUT, KnowledgeBase
from mmrag.locks import fsync_dir
from mmrag.lifecycle import signing
from mmrag.lifecycle.roots import allowed_roots, outside_roots
from mmrag.lifecycle.snapfiles import (AGAIN, FORMAT, FORMAT_VERSION, INDEX, check_files, index_digest, jsonl_rows,
                                       load_index, open_listed, read_vectors, refused)
from mmrag.lifecycle.driftrefs import COLUMNS as DRIFT_COLUMNS
from mmrag.lifecycle.driftrefs import DriftRefs
from mmrag.lifecycle.probes import COLUMNS as PROBE_COLUMNS
from mmrag.lifecycle.probes import ProbeStore
from mmrag.lifecycle.versions import Versions, split_label
from mmrag.manifest import COLLECTION_TABLES, Manifest
from mmrag.registry import ModelChoice, check_collection_name
from mmrag.stores.chroma import IDENTITY_PREFIX, SERVER_TIMEOUT
from mmrag.types import RecordBatch

log = logging.getLogger(__name__)

#: Records per batch file (and per Chroma read and write).
BATCH = 5000
#: Snapshots and restores never embed; the knowledge base they open needs no models.
_NO_MODELS = ModelChoice(profile="none", clip=ClipSpec(pretrained=None), text_model="")


@dataclass(frozen=True)
class SnapshotInfo:
    """What :func:`create` wrote."""

    path: Path
    kb_name: str
    label: str  # kb@N
    physical: str
    counts: dict[str, int]
    files: int
    size_bytes: int
    seconds: float
    key_id: str = ""  # the data dir key that signed it (see mmrag.lifecycle.signing)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``kb`` is the knowledge base's name, as in every other lifecycle reply)."""
        fields = asdict(self)
        return {"kb": fields.pop("kb_name"), **fields, "path": str(self.path)}


@dataclass(frozen=True)
class RestoreInfo:
    """What :func:`restore` created."""

    name: str
    source_label: str
    counts: dict[str, int]
    seconds: float
    checked: list[str] = field(default_factory=list)  # what was verified after the restore
    trust: str = "own"  # how the snapshot was trusted: own (this data dir's key), key (--key), unsigned
    key_id: str | None = None  # the key that signed it, if any
    roots: list[str] = field(default_factory=list)  # folders repair and reindex may read sources under
    outside_roots: int = 0  # document sources outside them (repair and reindex refuse to read them)
    outside_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _roles(kb: KnowledgeBase) -> list[tuple[str, str]]:
    return [("clip", kb.clip_name), ("image", kb.image_name), ("text", kb.text_name)]


def _open_kb(data_dir: Path, collection: str, models: ModelChoice | None, store_url: str | None,
             lock_timeout: float, store_timeout: float, vector_store: str) -> KnowledgeBase:
    return KnowledgeBase(data_dir, collection, models or _NO_MODELS, store_url=store_url, lock_timeout=lock_timeout,
                         store_timeout=store_timeout, vector_store=vector_store)


# -- create ------------------------------------------------------------------------------------
def create(kb_name: str, out: Path, *, data_dir: Path, models: ModelChoice | None = None,
           store_url: str | None = None, lock_timeout: float = LOCK_TIMEOUT,
           store_timeout: float = SERVER_TIMEOUT, batch: int = BATCH, vector_store: str = "chroma") -> SnapshotInfo:
    """Snapshot knowledge base ``kb_name`` (its live version, or ``kb@N``) into the new folder ``out``.

    Holds the version's writer lock for the whole copy, so writers wait and readers go on. The
    knowledge base it opens is closed at the end (for the embedded store, that lets another
    process open it again).

    Args:
        kb_name: ``kb`` (its live version) or ``kb@N``.
        out: the snapshot folder; must not exist, or be empty.
        data_dir: the data dir holding the knowledge base.
        models: unused (nothing is embedded); accepted so callers pass what they have.
        store_url: a Chroma server URL; ``None`` for the embedded store.
        lock_timeout: seconds to wait for a writer that holds the lock.
        store_timeout: seconds a Chroma server request may take.
        batch: records per batch file.
        vector_store: the vector store backend (``registry.VECTOR_STORES``); every collection is
            read through the :class:`~mmrag.protocols.VectorStore` protocol.

    Returns:
        What was written.

    Raises:
        NotFoundError: no such knowledge base or version.
        InvalidInputError: ``out`` exists and is not empty.
        StoreBusyError: a writer held the lock for longer than ``lock_timeout``.
        StoreError: a store or the disk failed (nothing is left at ``out``).
    """
    started = time.monotonic()
    out, data_dir = Path(out), Path(data_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"{out} exists and is not empty; snapshot into a new folder")
    if not (data_dir / "manifest.sqlite3").is_file():
        raise NotFoundError(f"{data_dir} holds no mmrag data dir (no manifest.sqlite3); pass --data-dir")
    manifest = Manifest(data_dir / "manifest.sqlite3")
    try:
        versions = Versions(manifest)
        physical = versions.resolve(kb_name)
        owner = versions.owner(physical)
        base_name = owner[0] if owner else physical
        label = versions.label_of(physical)
        version = versions.get(*owner).to_dict() if owner else None
    finally:
        manifest.close()
    key = signing.signing_key(data_dir)
    source = _open_kb(data_dir, physical, models, store_url, lock_timeout, store_timeout, vector_store)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with source.write_lock():
            if not source.manifest.has_collection(physical) and not source.existing_collections():
                raise NotFoundError(f"knowledge base {kb_name!r} does not exist in {data_dir}")
            files = _Files(tmp)
            counts = _write_manifest(files, source.manifest, physical, base_name)
            collections = {}
            for role, name in _roles(source):
                collections[role], counts[role] = _write_collection(files, source, role, name, batch)
            counts["keyword"] = source.keyword.count()
            files.copy_tree(source.keyword_dir, "keyword")
            n_clip, n_text = source.manifest.totals(physical)
        body = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "mmrag_version": __version__,
            "created_at": time.time(),
            "source": {"kb": base_name, "label": label, "physical": physical, "data_dir": str(data_dir.resolve()),
                       "store": store_url or "embedded", "version": version},
            "counts": counts, "manifest_totals": {"n_clip": n_clip, "n_text": n_text},
            "collections": collections, "files": files.listing,
        }
        signed = {**body, "digest": index_digest(body)}
        index = {**signed, "signature": signing.sign(signed, key)}
        files.write(INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above): rename needs the name free
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except MmragError:
        raise
    except (OSError, ValueError) as exc:  # the disk, or a value JSON cannot hold (NaN)
        raise StoreError(f"Cannot write the snapshot {out}: {getattr(exc, 'strerror', None) or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        source.close()
    return SnapshotInfo(path=out, kb_name=base_name, label=label, physical=physical, counts=counts, files=len(files.listing) + 1,
                        size_bytes=sum(f["size"] for f in files.listing.values()), seconds=time.monotonic() - started,
                        key_id=signing.key_id(key))


def _write_manifest(files: "_Files", manifest: Manifest, physical: str, kb_name: str) -> dict[str, int]:
    # Each table through its owner: the manifest's own, the drift references, the probes, the roots.
    counts = {table: files.write_jsonl(f"manifest/{table}.jsonl", manifest.export_rows(table, physical, BATCH))
              for table in COLLECTION_TABLES}
    counts["drift_refs"] = files.write_jsonl("manifest/drift_refs.jsonl", DriftRefs(manifest).rows(physical))
    counts["probes"] = files.write_jsonl("manifest/probes.jsonl", ProbeStore(manifest).rows(kb_name))
    # Its knowledge base's roots (every version reads the sources the first one was ingested from).
    counts["roots"] = files.write_jsonl("manifest/roots.jsonl",
                                        ({"root": r} for r in sorted(allowed_roots(manifest, physical))))
    return counts


def _write_collection(files: "_Files", kb: KnowledgeBase, role: str, name: str, batch: int
                      ) -> tuple[dict[str, Any] | None, int]:
    info = kb.collection_info(name)
    if info is None:
        return None, 0
    files.write(f"chroma/{role}/collection.json", json.dumps(info, sort_keys=True).encode())
    store = kb.open_collection(name, None, owned=False)  # no identity, no owner: opens without claiming anything
    batches, total = [], 0
    for i, part in enumerate(store.iter_batches(batch)):
        stem = f"chroma/{role}/{i:05d}"
        buf = io.BytesIO()
        np.save(buf, part.vectors, allow_pickle=False)
        files.write(stem + ".npy", buf.getvalue())
        files.write_jsonl(stem + ".jsonl", ({"id": rid, "metadata": meta, "document": doc}
                                            for rid, meta, doc in zip(part.ids, part.metadatas, part.documents)))
        batches.append({"stem": stem, "records": len(part.ids)})
        total += len(part.ids)
    if total != store.count():
        raise StoreDamagedError(f"Chroma collection {name!r} reports {store.count()} records but a full read gave "
                                f"{total}; run `mmrag doctor` on it before taking a snapshot")
    return {**info, "batches": batches}, total


class _Files:
    """Writes the snapshot's files under ``root``, fsynced, remembering each one's sha256 and size."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.listing: dict[str, dict[str, Any]] = {}

    def _open(self, rel: str) -> Any:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")

    def write(self, rel: str, data: bytes) -> None:
        with self._open(rel) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if rel != INDEX:
            self.listing[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def write_jsonl(self, rel: str, rows: Iterable[Any]) -> int:
        digest, size, n = hashlib.sha256(), 0, 0
        with self._open(rel) as fh:
            for row in rows:
                line = (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode()
                fh.write(line)
                digest.update(line)
                size, n = size + len(line), n + 1
            fh.flush()
            os.fsync(fh.fileno())
        self.listing[rel] = {"sha256": digest.hexdigest(), "size": size}
        return n

    def copy_tree(self, src: Path, rel: str) -> None:
        if not Path(src).is_dir():
            return
        for path in sorted(_regular_files(Path(src))):
            if path.name.startswith(".tantivy-") and path.name.endswith(".lock"):
                continue  # tantivy's own lock files: recreated on open, meaningless in a copy
            target = f"{rel}/{path.relative_to(src).as_posix()}"
            digest, size = hashlib.sha256(), 0
            with open(path, "rb") as fin, self._open(target) as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            self.listing[target] = {"sha256": digest.hexdigest(), "size": size}


def _regular_files(root: Path) -> Iterator[Path]:
    """The regular files under ``root``; raise on a link or special file (mmrag never writes one there)."""
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise StoreDamagedError(f"{path} is a link or special file, which mmrag never writes into a keyword "
                                        "index folder (a restore by an older mmrag may have): remove it, then run "
                                        "`mmrag doctor --repair` and snapshot again")
            if stat.S_ISREG(mode):
                yield path


# -- verify ------------------------------------------------------------------------------------
def verify(snapshot: Path) -> dict[str, Any]:
    """Check that a snapshot is whole and holds nothing but its listed regular files; return its ``snapshot.json``.

    Checks the index's digest, refuses links, special files and unsafe listed paths anywhere (see
    :mod:`mmrag.lifecycle.snapfiles`), then every listed file's size, sha256 and, for vectors,
    ``.npy`` header. Who wrote the snapshot is :func:`mmrag.lifecycle.signing.check`'s question,
    which :func:`restore` asks in between.

    Raises:
        NotFoundError: no such folder.
        InvalidInputError: the folder is not an mmrag snapshot, of a newer format, or holds what a
            snapshot never does (a link, a device, a path outside it, an oversized array).
        StoreDamagedError: a file is missing, of another size or checksum (the message names it).
    """
    index = load_index(Path(snapshot))
    check_files(Path(snapshot), index)
    return index


# -- restore -----------------------------------------------------------------------------------
def restore(snapshot: Path, as_name: str, *, data_dir: Path, models: ModelChoice | None = None,
            store_url: str | None = None, lock_timeout: float = LOCK_TIMEOUT,
            store_timeout: float = SERVER_TIMEOUT, key_file: Path | None = None, trust_unsigned: bool = False,
            source_roots: Iterable[Path] = (), vector_store: str = "chroma") -> RestoreInfo:
    """Restore a snapshot as the new knowledge base ``as_name`` (unversioned: version 1).

    The snapshot is checked before anything is created: whole (every checksum), closed (nothing
    but listed regular files, see :func:`verify`) and signed by a trusted key (see
    :mod:`mmrag.lifecycle.signing`). The Chroma collections are created with the snapshot's
    embedding identity and owned by this data dir; records are written with their vectors; then
    the keyword index and the manifest rows. Counts are checked against the snapshot at the end;
    on any failure everything the restore created is removed again.

    The folders the documents were ingested from (where ``doctor --repair`` and ``reindex`` may
    read their sources, see :mod:`mmrag.lifecycle.roots`) are taken from the snapshot only when
    this data dir's own key signed it; otherwise only ``source_roots`` are.

    Args:
        snapshot: the snapshot folder.
        as_name: the new knowledge base's name (must not exist in this data dir or store).
        data_dir: the data dir to restore into (created when missing).
        models: unused (nothing is embedded).
        store_url: a Chroma server URL; ``None`` for the embedded store.
        lock_timeout: seconds to wait for the new name's writer lock.
        store_timeout: seconds a Chroma server request may take.
        key_file: the ``snapshot.key`` of the data dir that made the snapshot, when another.
        trust_unsigned: restore a snapshot that no held key signed.
        source_roots: folders of this machine the restored documents' sources may be read under.
        vector_store: the vector store backend to restore into (``registry.VECTOR_STORES``).

    Raises:
        NotFoundError: no snapshot at ``snapshot``.
        InvalidInputError: not a snapshot, not one mmrag writes, not signed by a trusted key, or
            ``as_name`` is not a plain new name.
        StoreDamagedError: a snapshot file is missing or corrupt, or the restored counts disagree.
        StoreError: a store failed (what was created is removed).
    """
    started = time.monotonic()
    snapshot = Path(snapshot)
    if split_label(as_name)[1] is not None or re.fullmatch(r".+--v[0-9]+", as_name):
        plain = as_name.split("@")[0].split("--v")[0]
        raise InvalidInputError(f"restore as a plain knowledge base name, not a version label or a version's "
                                f"collection ({as_name!r}); for example --as {plain}-restored")
    check_collection_name(as_name)
    index = load_index(snapshot)
    trust = signing.check(snapshot, index, data_dir=Path(data_dir), key_file=key_file, trust_unsigned=trust_unsigned)
    check_files(snapshot, index)
    roots = sorted({os.path.abspath(p) for p in source_roots}
                   | (set(_listed_roots(snapshot, index)) if trust.how == "own" else set()))
    target = _open_kb(Path(data_dir), as_name, models, store_url, lock_timeout, store_timeout, vector_store)
    try:
        with target.write_lock():
            _refuse_existing(target)
            try:
                checked = _restore_into(target, snapshot, index, roots)
            except BaseException as exc:
                _undo(target)
                if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, MmragError):
                    raise StoreError(f"Cannot restore {snapshot} as {as_name!r}: {exc}; nothing was kept") from exc
                raise
            outside = outside_roots(target.manifest, as_name, target.manifest.sources(as_name))
    finally:
        target.close()
    return RestoreInfo(name=as_name, source_label=index["source"]["label"], counts=dict(index["counts"]),
                       seconds=time.monotonic() - started, checked=checked, trust=trust.how, key_id=trust.key_id,
                       roots=roots, outside_roots=len(outside), outside_examples=outside[:3])


def _listed_roots(snapshot: Path, index: dict[str, Any]) -> list[str]:
    return [r["root"] for r in _jsonl(snapshot, index, "manifest/roots.jsonl")
            if isinstance(r, dict) and isinstance(r.get("root"), str) and os.path.isabs(r["root"])] \
        if "manifest/roots.jsonl" in index["files"] else []


def _jsonl(snapshot: Path, index: dict[str, Any], rel: str) -> Iterator[Any]:
    """A listed JSONL file's rows, streamed."""
    with open_listed(snapshot, rel, index["files"][rel]["size"]) as fh:
        yield from jsonl_rows(snapshot, rel, fh)


def _refuse_existing(kb: KnowledgeBase) -> None:
    name, m = kb.collection, kb.manifest
    where = []
    if m.has_collection(name) or m.has_flags(name):
        where.append("the manifest")
    if Versions(m).knows(name) or ProbeStore(m).exists(name):
        where.append("the lifecycle tables (versions, probes)")
    clash = sorted(kb.existing_collections())
    if clash:
        where.append(f"the vector store ({', '.join(clash)})")
    if kb.keyword_dir.exists() and any(kb.keyword_dir.iterdir()):
        where.append(f"the keyword index folder {kb.keyword_dir}")
    if where:
        raise InvalidInputError(f"knowledge base {name!r} already exists here (in {'; '.join(where)}); restore "
                                "under another name with --as, or drop it first")


def _restore_into(kb: KnowledgeBase, snapshot: Path, index: dict[str, Any], roots: list[str]) -> list[str]:
    counts = index["counts"]
    for role, name in _roles(kb):
        info = index["collections"].get(role)
        if info is None:
            continue
        identity = {k[len(IDENTITY_PREFIX):]: v for k, v in info["metadata"].items() if k.startswith(IDENTITY_PREFIX)}
        # The ordinary open path: created in cosine space with the identity, owned by this data dir.
        store = kb.open_collection(name, identity or None)
        for part in info["batches"]:
            store.upsert_batch(_read_batch(snapshot, index, part))
    _copy_keyword(snapshot, index, kb.keyword_dir)
    _write_rows(kb, snapshot, index, roots)

    # What the restore holds must be what the snapshot says it held.
    have = {role: kb.open_collection(name, None, owned=False).count() for role, name in _roles(kb)
            if index["collections"].get(role) is not None}
    have["keyword"] = kb.keyword.count()
    m_counts = kb.manifest.counts(kb.collection)
    have["documents"] = sum(m_counts.values())
    n_clip, n_text = kb.manifest.totals(kb.collection)
    wrong = [f"{what}: {got} restored, {counts[what]} in the snapshot" for what, got in have.items()
             if int(got) != counts[what]]
    totals = index["manifest_totals"]
    if (n_clip, n_text) != (totals["n_clip"], totals["n_text"]):
        wrong.append(f"manifest totals: {(n_clip, n_text)} restored, {(totals['n_clip'], totals['n_text'])} in the "
                     "snapshot")
    if wrong:
        raise StoreDamagedError(f"The restore of {snapshot} as {kb.collection!r} does not match the snapshot "
                                f"({'; '.join(wrong)}); nothing was kept. Check the store and retry.")
    return sorted(have) + ["manifest totals"]


def _read_batch(snapshot: Path, index: dict[str, Any], part: dict[str, Any]) -> RecordBatch:
    stem = part["stem"]
    try:
        rows = [(r["id"], r["metadata"], r["document"]) for r in _jsonl(snapshot, index, stem + ".jsonl")]
    except (KeyError, TypeError) as exc:
        raise refused(snapshot, f"{stem}.jsonl holds a line that is not a record ({exc})") from exc
    size = index["files"][stem + ".npy"]["size"]
    with open_listed(snapshot, stem + ".npy", size) as fh:
        vectors = read_vectors(snapshot, stem + ".npy", fh, size, part["records"])
    if len(rows) != len(vectors):
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {stem}.npy holds {vectors.shape} vectors for "
                                f"{len(rows)} records. {AGAIN}")
    return RecordBatch([r[0] for r in rows], vectors, [r[1] for r in rows], [r[2] for r in rows])


def _copy_keyword(snapshot: Path, index: dict[str, Any], dest: Path) -> None:
    # Only the listed files, each opened without following links; copied beside the destination,
    # then renamed: a crash never leaves half an index in place.
    tmp = dest.with_name(f".{dest.name}.restoring-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for rel, want in sorted(index["files"].items()):
            if not rel.startswith("keyword/"):
                continue
            target = tmp / rel[len("keyword/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_listed(snapshot, rel, want["size"]) as fin, open(target, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        if dest.exists():
            dest.rmdir()  # empty: checked before the restore began
        os.rename(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise StoreError(f"Cannot restore the keyword index into {dest}: {exc.strerror or exc}") from exc
        raise


def _write_rows(kb: KnowledgeBase, snapshot: Path, index: dict[str, Any], roots: list[str]) -> None:
    name = kb.collection

    def rows(table: str, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
        rel = f"manifest/{table}.jsonl"
        for n, row in enumerate(_jsonl(snapshot, index, rel), 1):
            try:
                yield tuple(row[c] for c in columns)
            except (KeyError, TypeError) as exc:
                raise refused(snapshot, f"{rel} line {n} is not a row of the {table} table ({exc})") from exc

    # One transaction, each table through its owner: the knowledge base appears in the manifest
    # whole, or not at all.
    with kb.manifest.transaction() as db:
        for table, columns in COLLECTION_TABLES.items():
            Manifest.import_rows(db, table, name, rows(table, columns))
        DriftRefs.insert(db, name, rows("drift_refs", DRIFT_COLUMNS))
        ProbeStore.insert(db, name, rows("probes", PROBE_COLUMNS))
        Manifest.replace_roots(db, name, roots)  # a dropped name's leftovers are not this snapshot's


def _undo(kb: KnowledgeBase) -> None:
    """Remove what a failed restore created (the name did not exist before it began)."""
    try:
        kb.drop()
        # Kept per knowledge base, so kb.drop() leaves them.
        ProbeStore(kb.manifest).remove_all(kb.collection)
        kb.manifest.remove_roots(kb.collection)
    except MmragError as exc:
        log.error("The failed restore of %r could not remove all it created (%s); drop it with `mmrag reset "
                  "--collection %s`", kb.collection, exc, kb.collection)
