"""Finishing the uploads a killed server left behind, in the background, after start-up.

A server killed mid-upload (``kill -9``, a crash, a lost machine) leaves files under
``DATA_DIR/uploads/<collection>/`` whose manifest rows are missing or still ``pending``: the upload
stored them, then died before (or while) indexing them. Re-ingesting them finishes the job.

This runs in a thread of its own once the models have loaded (``Services.settled``), never on the
loader thread and never on a request: the loader used to do it itself, and since every model
user waits for ``settled``, which the loader sets only when it returns, it waited on itself for
``api.ready_timeout`` (600 s) while ``/readyz`` already said ready.

While it runs, ``/readyz`` stays **200** and its detail says ``resuming N interrupted upload(s)``;
see :meth:`UploadResume.status` for why it is not a 503.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from mmrag.errors import MmragError

if TYPE_CHECKING:
    from mmrag.http.services import Services

log = logging.getLogger("mmrag.http")


class UploadResume:
    """The resume of interrupted uploads for one server process (started once, after the models load).

    Args:
        services: the server's services (its manifest, knowledge bases and models).
    """

    def __init__(self, services: "Services") -> None:
        self.services = services
        #: Set when the resume has finished (or found nothing to do), whether it worked or not.
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._remaining: dict[str, int] | None = None  # collection -> files left; None while scanning
        self._failed: dict[str, str] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="mmrag-resume-uploads", daemon=True)
        self._thread.start()

    def status(self) -> str | None:
        """What ``/readyz`` adds to "ready": None once nothing is left to resume.

        It is a detail of a ready server, not a 503. The interrupted uploads were never
        acknowledged (their clients got no 201 and retry them), so serving while they are
        finished breaks no promise; a load balancer that took the server out of rotation until
        they were done would refuse every search of what is already indexed, for as long as the
        indexing takes (minutes for a batch of scanned PDFs), and on the embedded store there is
        no other instance to send them to. An operator (or a test) watches the detail instead.
        """
        with self._lock:
            remaining = self._remaining
            failed = dict(self._failed)
        parts = []
        if self._thread is not None and not self.done.is_set():
            if remaining is None:
                parts.append("checking for interrupted uploads")
            elif sum(remaining.values()):
                names = ", ".join(sorted(n for n, left in remaining.items() if left))
                parts.append(f"resuming {sum(remaining.values())} interrupted upload(s) ({names})")
        if failed:
            parts.append("could not resume the uploads of " + "; ".join(f"{n}: {why}" for n, why in sorted(failed.items())))
        return "; ".join(parts) or None

    def _run(self) -> None:
        try:
            todo = self._scan()
            with self._lock:
                self._remaining = {name: len(files) for name, files in todo.items()}
            for name, files in todo.items():
                self._resume(name, files)
        except Exception:  # noqa: BLE001 - a thread that dies silently would leave /readyz saying "resuming" forever
            log.exception("resuming interrupted uploads failed unexpectedly")
            with self._lock:
                self._failed["*"] = "unexpected error; see the server log"
        finally:
            with self._lock:
                self._remaining = {}
            self.done.set()

    def _scan(self) -> dict[str, list[Path]]:
        """The stored upload files of each collection that the manifest does not have as indexed."""
        root = (Path(self.services.data_dir) / "uploads").resolve()
        todo: dict[str, list[Path]] = {}
        if not root.is_dir():
            return todo
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            # Hidden files are uploads still being staged (or stale temporaries): never documents.
            files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                continue
            try:
                physical = self.services.physical(folder.name)
                indexed = {s.source for s in self.services.manifest.under(physical, f"{folder}/")
                           if s.status != "pending"}
            except MmragError as exc:  # a folder that is no collection name, or the manifest is unreadable
                self._fail(folder.name, folder, exc)
                continue
            left = [p for p in files if str(p) not in indexed]
            if left:
                todo[folder.name] = left
        return todo

    def _resume(self, name: str, files: list[Path]) -> None:
        from mmrag.indexing import Indexer, ingest_limits
        from mmrag.lifecycle.promotion import ingest_on_live_version

        folder = files[0].parent
        try:
            kb = self.services.kb(name, create=True)
            log.warning("collection %r: resuming %d interrupted upload(s) from %s", name, len(files), folder)
            # The same per-document budgets as an upload (MMRAG_INGEST__*); takes the writer lock per write.
            limits = ingest_limits(self.services.settings)
            summary = ingest_on_live_version(
                name, kb, lambda live, guard: Indexer(live, limits=limits, guard=guard).ingest(files),
                resolve=self.services.physical, open_kb=lambda n: self.services.kb(n, create=True))
            log.warning("collection %r: resumed uploads: %d indexed, %d failed", name, summary.indexed,
                        len(summary.failed))
        except MmragError as exc:
            self._fail(name, folder, exc)
        finally:
            with self._lock:
                if self._remaining is not None:
                    self._remaining[name] = 0

    def _fail(self, name: str, folder: Path, exc: MmragError) -> None:
        # The server still serves; the operator can finish the job by hand (the log says how).
        log.error("collection %r: could not resume its uploads (%s: %s); run `mmrag ingest %s --collection %s`",
                  name, type(exc).__name__, exc, folder, name)
        with self._lock:
            self._failed[name] = f"{type(exc).__name__}: {exc}"
