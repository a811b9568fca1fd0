"""Damage checks for the embedded Chroma store, run in a child process.

A damaged HNSW segment crashes Chroma's native code with a segmentation fault, which no Python
code in the same process can catch or explain. So the check opens the store in a child process:
it reads each collection and asks for a few stored records by their own vectors (a record must
find itself). A child killed by a signal, a read that fails, or records that do not find
themselves (segment files deleted: Chroma then answers from what is left, silently wrong) mark the
store as damaged, and the message names the folder and the command that rebuilds it.

The check is repeated only when the store's files changed since the last clean check (their sizes
and modification times are remembered), so it costs one child process after each write, not one
per command.

Run as ``python -m mmrag.stores.damage CHROMA_DIR``: prints a JSON report, exits 0.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from mmrag.errors import StoreDamagedError

#: Stored records per collection asked to find themselves.
SAMPLES = 3
#: Seconds the child may take (opening Chroma and a few queries take about 2 s here).
PROBE_TIMEOUT = 120.0


def rebuild_hint(chroma_dir: Path) -> str:
    """The commands that rebuild an embedded store from the manifest and the sources."""
    return (f"Move it aside (`mv {chroma_dir} {chroma_dir}.damaged`) and rerun `mmrag ingest` on the paths you "
            "ingested: the manifest redoes every document from its source")


_verified: set[str] = set()
_guard = threading.Lock()


def verify_once(chroma_dir: Path, stamp_file: Path) -> None:
    """:func:`verify_embedded`, at most once per process and store.

    The caller holds the store's claim (:func:`mmrag.locks.claim`), so no other process changes it
    meanwhile; at exit the store's signature is recorded as clean, so the next process skips the
    check unless something else changed the files (a crash before exit leaves no record, so the
    next process checks).
    """
    key = os.path.realpath(chroma_dir)
    with _guard:
        if key in _verified:
            return
        verify_embedded(chroma_dir, stamp_file)
        _verified.add(key)
        atexit.register(_record_clean, chroma_dir, stamp_file)


def _record_clean(chroma_dir: Path, stamp_file: Path) -> None:
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(json.dumps(_signature(chroma_dir)))
    except OSError:
        pass  # only costs a check next time


def _signature(chroma_dir: Path) -> list[list[Any]]:
    out: list[list[Any]] = []
    for root, _, files in os.walk(chroma_dir):
        for name in sorted(files):
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            out.append([str(path.relative_to(chroma_dir)), st.st_size, st.st_mtime_ns])
    return sorted(out)


def verify_embedded(chroma_dir: Path, stamp_file: Path) -> None:
    """Raise :class:`StoreDamagedError` if the embedded store at ``chroma_dir`` is damaged.

    Args:
        chroma_dir: the ``PersistentClient`` folder.
        stamp_file: where the signature of the last clean check is kept.
    """
    sqlite = chroma_dir / "chroma.sqlite3"
    if not sqlite.exists():
        return  # a new store: nothing to check yet
    try:
        with open(sqlite, "rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise StoreDamagedError(f"The embedded store {chroma_dir} is unreadable ({exc.strerror or exc}). "
                                f"{rebuild_hint(chroma_dir)}") from exc
    if header != b"SQLite format 3\x00":
        # Chroma would silently start a new, empty database over a truncated or overwritten one.
        raise StoreDamagedError(f"The embedded store {chroma_dir} is damaged: {sqlite.name} is not a SQLite "
                                f"database ({len(header)} bytes of header). {rebuild_hint(chroma_dir)}")
    signature = _signature(chroma_dir)
    try:
        if json.loads(stamp_file.read_text()) == signature:
            return
    except (OSError, ValueError):
        pass
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANONYMIZED_TELEMETRY": "False"}
    try:
        proc = subprocess.run([sys.executable, "-m", "mmrag.stores.damage", str(chroma_dir)], env=env,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StoreDamagedError(f"The embedded store {chroma_dir} did not answer a check within {PROBE_TIMEOUT:g} s. "
                                f"{rebuild_hint(chroma_dir)}") from exc
    if proc.returncode < 0:
        raise StoreDamagedError(
            f"The embedded store {chroma_dir} is damaged: Chroma crashed reading it (signal {-proc.returncode}). "
            f"{rebuild_hint(chroma_dir)}")
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = {"problems": [f"the check failed: {proc.stderr.strip()[-500:]}"]}
    if report.get("problems"):
        raise StoreDamagedError(f"The embedded store {chroma_dir} is damaged: {'; '.join(report['problems'])}. "
                                f"{rebuild_hint(chroma_dir)}")
    _record_clean(chroma_dir, stamp_file)


def _check(chroma_dir: str) -> dict[str, Any]:
    import chromadb
    import numpy as np
    from chromadb.config import Settings

    problems: list[str] = []
    try:
        client = chromadb.PersistentClient(path=chroma_dir, settings=Settings(anonymized_telemetry=False))
        for col in client.list_collections():
            col = client.get_collection(col.name if not isinstance(col, str) else col, embedding_function=None)
            n = col.count()
            if n == 0:
                continue
            for offset in sorted({0, n // 2, n - 1})[:SAMPLES]:
                got = col.get(limit=1, offset=offset, include=["embeddings"])
                vec = np.asarray(got["embeddings"], dtype=np.float32)
                res = col.query(query_embeddings=vec, n_results=min(10, n), include=["distances"])
                # Many records may share one vector (the same short text, an image twice): then
                # another of them may come first, and an index that found a twin works.
                twin = bool(res["distances"][0]) and min(res["distances"][0]) <= 1e-4
                if got["ids"][0] not in res["ids"][0] and not twin:
                    problems.append(f"collection {col.name!r}: stored record {got['ids'][0]!r} is not found by its own "
                                    "vector (its vector index is missing or damaged)")
                    break
    except Exception as exc:  # noqa: BLE001 - the report carries whatever Chroma raised, by name
        problems.append(f"reading it failed: {type(exc).__name__}: {exc}")
    return {"problems": problems}


if __name__ == "__main__":
    print(json.dumps(_check(sys.argv[1])))
