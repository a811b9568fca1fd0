"""Reading a snapshot folder as hostile input: its index, then only listed regular files of bounded size and shape.

A snapshot may come from anyone, and its checksums are plain sha256 that its author recomputes
(its signature is :mod:`mmrag.lifecycle.signing`'s concern). So before a restore reads a byte of it:

* ``snapshot.json`` is read with a size cap and checked for the shape a restore relies on, so a
  malformed one is refused with its name rather than a ``KeyError`` part-way;

* the whole tree is walked without following links: a symbolic link anywhere (listed or not), a
  device, a FIFO or a socket refuses the snapshot (a link to ``/etc/passwd`` or ``/dev/zero``
  would otherwise be copied or read);
* every listed path must be a plain relative path under ``manifest/``, ``chroma/`` or
  ``keyword/`` (no absolute path, no ``..``), checked before the file system is asked about it,
  so a listing cannot probe the machine for the existence or size of ``/etc/shadow``;
* sizes are capped, and an ``.npy`` file's header is parsed and checked (dtype, 2 dimensions,
  its row count, and shape times item size equal to the bytes that follow) before any array is
  allocated: a 100-byte file declaring 2e9 x 384 floats is refused, not allocated.

Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again on the open descriptor, so a
file swapped for a link or a FIFO after the walk is refused too. Every refusal is an
:class:`~mmrag.errors.InvalidInputError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from mmrag.errors import InvalidInputError, NotFoundError, StoreDamagedError

FORMAT = "mmrag-snapshot"
FORMAT_VERSION = 1
INDEX = "snapshot.json"
AGAIN = "Nothing was restored. Restore another copy of this snapshot, or take a new one with `mmrag snapshot create`."
#: The manifest files every snapshot lists (``roots.jsonl`` is optional: older snapshots lack it).
_MANIFEST_FILES = ("documents", "files", "flags", "drift_refs", "probes")


#: The largest ``snapshot.json`` read (a listing of ~500k files).
MAX_INDEX_BYTES = 64 << 20
#: The largest file a snapshot may list (keyword index segments are the largest mmrag writes).
MAX_FILE_BYTES = 16 << 30
#: The largest batch ``.jsonl`` (read whole, one batch at a time).
MAX_BATCH_BYTES = 1 << 30
#: The most records per batch and the widest vector a restore accepts (mmrag writes 5000 and <= 1024).
MAX_BATCH_RECORDS = 100_000
MAX_DIM = 16_384
#: The longest JSONL line read (a record or a manifest row; mmrag writes a few KB).
MAX_LINE_BYTES = 64 << 20
#: The most entries (files and folders) walked in a snapshot.
MAX_ENTRIES = 1_000_000
TOPS = ("manifest", "chroma", "keyword")
_PART = re.compile(r"[^/\\\x00]+")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def refused(snapshot: Path, what: str) -> InvalidInputError:
    """The error for a snapshot that is not one mmrag writes (``what`` names the file and the problem)."""
    return InvalidInputError(f"The snapshot {snapshot} is refused: {what}. Nothing was restored. A snapshot mmrag "
                             "writes holds only the regular files its snapshot.json lists; restore only snapshots "
                             "from a source you trust, or take a new one with `mmrag snapshot create`")


def check_path(snapshot: Path, rel: Any) -> str:
    """``rel`` if it is a plain relative path under one of :data:`TOPS`; else raise (the file system is not asked)."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or parts[0] not in TOPS or len(parts) < 2 \
            or not all(_PART.fullmatch(p) and p not in {".", ".."} for p in parts):
        raise refused(snapshot, f"snapshot.json lists the path {rel!r}, which is not a plain relative path under "
                                f"{', '.join(t + '/' for t in TOPS)}")
    return rel


def check_listing(snapshot: Path, files: Any) -> dict[str, dict[str, Any]]:
    """Validate ``snapshot.json``'s ``files``: safe paths, integer sizes under the caps, sha256 hex digests."""
    if not isinstance(files, dict):
        raise refused(snapshot, "snapshot.json has no listing of files")
    for rel, want in files.items():
        check_path(snapshot, rel)
        size = want.get("size") if isinstance(want, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or not isinstance(want.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", want["sha256"]):
            raise refused(snapshot, f"snapshot.json lists {rel} without a valid size and sha256")
        cap = MAX_BATCH_BYTES if rel.startswith("chroma/") else MAX_FILE_BYTES
        if size > cap:
            raise refused(snapshot, f"{rel} is listed at {size} bytes, over the {cap >> 20} MiB a restore reads")
    return files


def walk(snapshot: Path) -> dict[str, os.stat_result]:
    """Every regular file under ``snapshot`` by relative path; raise on a link, a special file or too many entries."""
    found: dict[str, os.stat_result] = {}
    entries = 0
    stack = [("", str(snapshot))]
    while stack:
        rel_dir, folder = stack.pop()
        try:
            with os.scandir(folder) as scan:  # iterated, not listed: a folder of millions is refused, not held
                for entry in scan:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        raise refused(snapshot, f"it holds more than {MAX_ENTRIES} files and folders")
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise refused(snapshot, f"{rel} is a symbolic link (to {os.readlink(entry.path)!r})")
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((rel, entry.path))
                    elif stat.S_ISREG(st.st_mode):
                        found[rel] = st
                    else:
                        raise refused(snapshot, f"{rel} is not a regular file (a device, FIFO or socket)")
        except OSError as exc:
            raise refused(snapshot, f"its folder {rel_dir or '.'} cannot be read ({exc.strerror or exc})") from exc
    return found


@contextlib.contextmanager
def open_listed(snapshot: Path, rel: str, size: int) -> Iterator[BinaryIO]:
    """Open a listed file without following a link or blocking on a FIFO; check it is regular and of ``size``."""
    check_path(snapshot, rel)
    try:
        fd = os.open(snapshot / rel, _OPEN_FLAGS)
    except FileNotFoundError:
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {rel} is missing. Nothing was restored.") \
            from None
    except OSError as exc:  # ELOOP: it is a link
        raise refused(snapshot, f"{rel} cannot be opened as a regular file ({exc.strerror or exc})") from exc
    fh = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refused(snapshot, f"{rel} is not a regular file")
        if st.st_size != size:
            raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {rel} has {st.st_size} bytes, not {size}. "
                                    "Nothing was restored.")
        yield fh
    finally:
        fh.close()


def jsonl_rows(snapshot: Path, rel: str, fh: BinaryIO) -> Iterator[Any]:
    """The rows of an open JSONL file, one line at a time; a line over :data:`MAX_LINE_BYTES` or not JSON is refused."""
    n = 0
    while line := fh.readline(MAX_LINE_BYTES + 1):
        n += 1
        if len(line) > MAX_LINE_BYTES:
            raise refused(snapshot, f"{rel} line {n} is over {MAX_LINE_BYTES >> 20} MiB")
        try:
            yield json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise refused(snapshot, f"{rel} line {n} is not a JSON row ({type(exc).__name__})") from exc


def sha256_of(fh: BinaryIO) -> str:
    """The sha256 of an open file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def read_index(snapshot: Path, name: str) -> bytes | None:
    """The raw ``snapshot.json``, or ``None`` when there is none; refused if it is a link, special or too big."""
    try:
        st = os.lstat(snapshot / name)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise refused(snapshot, f"{name} is not a regular file")
    if st.st_size > MAX_INDEX_BYTES:
        raise refused(snapshot, f"{name} has {st.st_size} bytes, over the {MAX_INDEX_BYTES >> 20} MiB a restore reads")
    with os.fdopen(os.open(snapshot / name, _OPEN_FLAGS), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped since the lstat
            raise refused(snapshot, f"{name} is not a regular file")
        return fh.read(MAX_INDEX_BYTES + 1)


def npy_header(snapshot: Path, rel: str, fh: BinaryIO, size: int, records: int) -> tuple[int, int]:
    """Parse and check an ``.npy`` header on ``fh`` (left at the data); return (rows, dim). Nothing is allocated."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10_000)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10_000)
        else:
            raise ValueError(f"npy format version {version}")
    except (ValueError, SyntaxError) as exc:  # numpy parses the header dict with a literal eval
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {rel} has no valid .npy header ({exc}). "
                                "Nothing was restored.") from exc
    if dtype != np.dtype("<f4") or fortran or len(shape) != 2:
        raise refused(snapshot, f"{rel} holds {shape} {dtype} values; a snapshot holds float32 (records, dim) vectors")
    rows, dim = (int(n) for n in shape)
    if rows != records or rows > MAX_BATCH_RECORDS or not 0 < dim <= MAX_DIM:
        raise refused(snapshot, f"{rel} declares {rows} x {dim} vectors for a batch of {records} records "
                                f"(at most {MAX_BATCH_RECORDS} records of at most {MAX_DIM} dimensions)")
    if fh.tell() + rows * dim * 4 != size:
        raise refused(snapshot, f"{rel} declares {rows} x {dim} float32 vectors but holds "
                                f"{size - fh.tell()} bytes of data, not {rows * dim * 4}")
    return rows, dim


def read_vectors(snapshot: Path, rel: str, fh: BinaryIO, size: int, records: int) -> np.ndarray:
    """The checked ``.npy`` file's vectors (see :func:`npy_header`)."""
    rows, dim = npy_header(snapshot, rel, fh, size, records)
    data = bytearray(rows * dim * 4)  # bounded: npy_header checked it against the file's real size
    if fh.readinto(data) != len(data):
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {rel} ends early. Nothing was restored.")
    return np.frombuffer(data, dtype="<f4").reshape(rows, dim)


# -- the index and the files it lists -----------------------------------------------------------
def load_index(snapshot: Path) -> dict[str, Any]:
    """Read and check ``snapshot.json``: format, digest, and the shape of everything a restore reads from it."""
    if not snapshot.is_dir():
        raise NotFoundError(f"no snapshot at {snapshot}")
    try:
        raw = read_index(snapshot, INDEX)
        if raw is None:
            raise InvalidInputError(f"{snapshot} is not an mmrag snapshot (it has no {INDEX})")
        index = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        if isinstance(exc, InvalidInputError):
            raise
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {INDEX} cannot be read ({exc}). {AGAIN}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InvalidInputError(f"{snapshot} is not an mmrag snapshot ({INDEX} has no format {FORMAT!r})")
    if index.get("format_version") != FORMAT_VERSION:
        raise InvalidInputError(f"{snapshot} is a snapshot of format {index.get('format_version')}; this mmrag "
                                f"reads format {FORMAT_VERSION}. Restore it with the mmrag that wrote it "
                                f"({index.get('mmrag_version')})")
    body = {k: v for k, v in index.items() if k not in ("digest", "signature")}
    if index.get("digest") != index_digest(body):
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {INDEX} was changed after it was written "
                                f"(its digest does not match). {AGAIN}")
    listing = check_listing(snapshot, index.get("files"))
    try:
        _check_shape(index, listing)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise refused(snapshot, f"{INDEX} is not shaped as mmrag writes it ({type(exc).__name__}: {exc})") from exc
    return index  # type: ignore[no-any-return]


def _check_shape(index: dict[str, Any], listing: dict[str, Any]) -> None:
    """Raise KeyError, TypeError or ValueError unless what a restore reads from ``index`` is there and of its type."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(what)

    for table in _MANIFEST_FILES:
        need(f"manifest/{table}.jsonl" in listing, f"manifest/{table}.jsonl is not listed")
    counts, totals = index["counts"], index["manifest_totals"]
    need(isinstance(index["source"]["label"], str), "source.label is not a string")
    for key in ("documents", "keyword"):
        need(type(counts[key]) is int, f"counts.{key} is not an integer")
    for key in ("n_clip", "n_text"):
        need(type(totals[key]) is int, f"manifest_totals.{key} is not an integer")
    need(set(index["collections"]) <= {"clip", "image", "text"}, "collections has roles other than clip, image, text")
    for role, info in index["collections"].items():
        if info is None:
            continue
        need(type(counts[role]) is int and isinstance(info["metadata"], dict), f"collections.{role} is malformed")
        for part in info["batches"]:
            need(bool(re.fullmatch(rf"chroma/{role}/[0-9]{{5,}}", part["stem"])) and type(part["records"]) is int,
                 f"a batch of collections.{role} is malformed")
            for suffix in (".jsonl", ".npy"):
                need(part["stem"] + suffix in listing, f"{part['stem']}{suffix} is not listed")


def check_files(snapshot: Path, index: dict[str, Any]) -> None:
    """Walk the snapshot (see :func:`walk`), then check every listed file's size, sha256 and ``.npy`` header.

    Raises:
        InvalidInputError: a link, special file or oversized array (see the module docstring).
        StoreDamagedError: a listed file is missing, of another size or checksum (up to three are named).
    """
    found = walk(snapshot)  # refuses links and special files anywhere, listed or not
    problems = []
    for rel, want in index["files"].items():
        if rel not in found:
            problems.append(f"{rel} is missing")
        elif found[rel].st_size != want["size"]:
            problems.append(f"{rel} has {found[rel].st_size} bytes, not {want['size']}")
        else:
            with open_listed(snapshot, rel, want["size"]) as fh:
                if sha256_of(fh) != want["sha256"]:
                    problems.append(f"{rel} has another checksum (sha256) than when it was written")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreDamagedError(f"The snapshot {snapshot} is damaged: {'; '.join(problems[:3])}{more}. {AGAIN}")
    for role, info in index["collections"].items():
        for part in (info or {}).get("batches", []):
            rel = part["stem"] + ".npy"
            with open_listed(snapshot, rel, index["files"][rel]["size"]) as fh:
                npy_header(snapshot, rel, fh, index["files"][rel]["size"], part["records"])


def index_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
