"""File locks that say who holds them: the per-collection writer lock, the per-knowledge-base lifecycle
lock and the embedded-store claim.

All are ``flock`` locks, which the kernel releases when the holder dies, so a ``kill -9`` never
leaves a stale lock behind. The holder writes its pid, command line and start time into the lock
file once it holds the lock, so a process that waits or is refused can name it.

:func:`fsync_dir` is here too: what a writer that replaces files by rename (the key file, a
snapshot) calls so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

from mmrag.errors import StoreBusyError, StoreError

#: Seconds between tries while waiting for a lock.
POLL = 0.05
_claims: dict[str, IO[bytes]] = {}
_claims_guard = threading.Lock()


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries to disk: a rename into it is durable only once this returns."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_holder(path: Path) -> str:
    """"pid 123 (`mmrag serve`, since 2026-12-02 10:00:00 UTC)", or a plain phrase when unknown."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = datetime.fromtimestamp(float(info.get("since", 0)), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {info['pid']} (`{info.get('command', '?')}`, since {since})"


def _record_holder(fh: IO[bytes]) -> None:
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:4]]
    command = " ".join(a for a in argv if a)
    if command.startswith("__main__.py"):
        command = "mmrag" + command[len("__main__.py"):]
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode())
    fh.flush()


def _open(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+b")
    except OSError as exc:
        raise StoreError(f"Cannot open the lock file {path}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def exclusive(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting at most ``timeout`` seconds.

    Args:
        path: the lock file (created when missing).
        timeout: seconds to wait for a holder to finish; 0 refuses at once.
        what: what the lock guards, for the message ("the writer lock of collection 'kb'").

    Raises:
        StoreBusyError: still held after ``timeout``; the message names the holder.
    """
    fh = _open(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"{what} is held by {describe_holder(path)}; waited {timeout:g} s. Wait for it to finish "
                        "and try again (MMRAG_STORE__LOCK_TIMEOUT sets how long a writer waits)."
                    ) from None
                time.sleep(POLL)
        try:
            _record_holder(fh)
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def claim(path: Path, *, what: str, hint: str) -> None:
    """Claim ``path`` for this process for as long as it lives (idempotent within the process).

    The embedded Chroma store is not safe with two processes on one folder (chroma #3792): the
    second one is refused here, before it opens the store, with ``hint`` saying what to do instead.

    Raises:
        StoreBusyError: another live process holds the claim.
    """
    key = os.path.realpath(path)
    with _claims_guard:
        if key in _claims:
            return
        fh = _open(path)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StoreBusyError(f"{what} is open in {describe_holder(path)}. {hint}") from None
        _record_holder(fh)
        _claims[key] = fh  # held until the process exits (the kernel then releases it)


def release(path: Path) -> None:
    """Give up a :func:`claim` (tests, and servers that drop a store)."""
    with _claims_guard:
        fh = _claims.pop(os.path.realpath(path), None)
    if fh is not None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


_held = threading.local()


@contextlib.contextmanager
def lifecycle(data_dir: Path, kb_name: str, *, timeout: float) -> Iterator[None]:
    """Hold ``kb_name``'s lifecycle lock: promote, rollback, prune, reindex's finish and drop take it, one at a time.

    Each of these reads the alias and then acts on what it read (prune picks the versions that are
    not live, then drops them); without one lock across processes a rollback can land between the
    read and the act, and prune then drops the version the rollback has just made live. The lock
    is a ``flock`` in ``<data dir>/locks/lifecycle/`` (collection names hold no ``/``, so it never
    meets a writer lock), re-entrant for the thread that holds it.

    Raises:
        StoreBusyError: another step of ``kb_name``'s lifecycle held it for longer than ``timeout``.
    """
    path = Path(data_dir) / "locks" / "lifecycle" / f"{kb_name}.lock"
    key = os.path.realpath(path)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    with exclusive(path, timeout=timeout, what=f"The lifecycle lock of knowledge base {kb_name!r}"):
        depth[key] = 1
        try:
            yield
        finally:
            depth.pop(key, None)
