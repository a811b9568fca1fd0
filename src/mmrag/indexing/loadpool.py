"""PDFs, Office files and images, loaded in worker processes while this process embeds.

OCR is what a scan costs: 0.7-2.5 s a page on one core, where embedding the page takes a
twentieth of that; parsing a PDF's layout and tables is the next cost. :class:`~mmrag.indexing.engines.LocalEngine`
used to load and embed one file after another, so on a 2-core machine one core parsed and read
pixels while the other waited. A :class:`LoadPool` runs :func:`~mmrag.indexing.steps.load_file`
for PDFs, Office files and images in ``workers`` processes, one OCR thread each; everything else
(text, Markdown, HTML, JSONL: they stream, and cost little to parse) loads in this process, in the
same order.

- **Processes, not threads.** pdfium is not thread-safe (pypdfium2 says so for any two documents
  at once), and the Python parsers hold the GIL.
- **Spawned**, not forked: this process runs torch's and Chroma's threads, and a fork copies a
  lock another thread holds. (A forkserver would start workers faster, but it is started once
  per process and its workers keep the environment of that moment.)
- **A worker dies with this process**, kill -9 included (``PR_SET_PDEATHSIG`` on Linux): no
  orphan keeps reading after the run is gone.
- **A worker that dies fails only its own file.** The pool is rebuilt; the files in flight with
  it are read again, one at a time, so the file that kills a worker (a crash in a decoder, the
  OOM killer) is the one that fails, with a message that says so, and the run goes on.
- **Bounded:** at most :data:`AHEAD` files in flight per worker, and their documents wait in
  memory until this process takes them, in the order of the plan.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, Sequence

from mmrag.chunking import ChunkSpec, SentenceChunker
from mmrag.indexing.steps import FileResult, FileTask, LoadedDoc, load_file
from mmrag.loaders import JsonlFields, LoaderLimits
from mmrag.loaders._common import DOC_TYPES
from mmrag.logs import configure_logging

log = logging.getLogger(__name__)

#: Document types loaded in the workers: page layouts, renders and OCR of pages, embedded pictures, image files.
HEAVY_TYPES = frozenset({"pdf", "docx", "pptx", "image"})
#: Files submitted ahead per worker, so the workers keep reading while this process embeds a batch.
AHEAD = 4
#: Files of the plan looked at ahead of the one being taken (the in-process ones wait here).
LOOKAHEAD = 256
#: What a file whose worker died is told (it is read alone first, so it is the one that died).
DIED = ("the loading process died while reading this file (a crash in a decoder or image library, or out of "
        "memory); the file is left out and the rest of the run goes on. Try it alone with --load-workers 0 "
        "to see the error, or leave it out")

Loaded = Iterable["LoadedDoc | FileResult"]


def loads_in_worker(task: FileTask) -> bool:
    """Whether a :class:`LoadPool` loads ``task``'s file (a PDF, an Office file or an image)."""
    return DOC_TYPES.get(task.ref.suffix) in HEAVY_TYPES


def plan_workers(requested: int | None, tasks: Sequence[FileTask]) -> int:
    """How many load processes a run gets: ``requested``, or one per core when two files or more load in one.

    Returns:
        0 to load everything in this process.
    """
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    heavy = sum(1 for task in tasks if loads_in_worker(task))
    return min(cores, heavy) if cores >= 2 and heavy >= 2 else 0


class LoadPool:
    """``workers`` processes that load the files :func:`loads_in_worker` picks.

    Args:
        workers: processes (at least 1).
        chunk: how documents are chunked (each worker builds its own chunker).
        jsonl, limits, redactor: as :func:`~mmrag.indexing.steps.load_file` takes them.
    """

    def __init__(self, workers: int, *, chunk: ChunkSpec, jsonl: JsonlFields, limits: LoaderLimits,
                 redactor: Any = None) -> None:
        self.workers = max(1, workers)
        # The worker logs as this process does (the loaders' warnings name the file and what went wrong).
        self._initargs = (chunk, jsonl, limits, redactor, os.getpid(), logging.getLogger().getEffectiveLevel())
        self.restarts = 0
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> LoadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _submit(self, task: FileTask) -> Future:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_worker, initargs=self._initargs)
        return self._executor.submit(_load, task)

    def _restart(self) -> None:
        self.restarts += 1
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def load(self, tasks: Sequence[FileTask], local: Callable[[FileTask], Loaded]) -> Iterator[Loaded]:
        """Each task's items, in the order of ``tasks``: from a worker, or from ``local(task)`` here.

        The workers read ahead while the caller takes the items of earlier files.
        """
        pending: collections.deque[tuple[FileTask, Future | None]] = collections.deque()
        upcoming = iter(tasks)
        suspects: set[int] = set()  # files in flight when a worker died: each is read again, alone
        in_flight = 0

        def top_up() -> None:
            nonlocal in_flight
            while not suspects and in_flight < self.workers * AHEAD and len(pending) < LOOKAHEAD:
                task = next(upcoming, None)
                if task is None:
                    return
                pooled = loads_in_worker(task)
                pending.append((task, self._submit(task) if pooled else None))
                in_flight += pooled

        top_up()
        while pending:
            task, future = pending.popleft()
            if future is None:
                top_up()
                yield local(task)
                continue
            in_flight -= 1
            if id(task) in suspects:
                suspects.discard(id(task))
                yield self._alone(task)
            else:
                try:
                    items = future.result()
                except BrokenProcessPool:
                    log.warning("a load process died; the %d files in flight are read again, one at a time",
                                in_flight + 1)
                    self._restart()
                    suspects.update(id(t) for t, f in pending if f is not None)
                    in_flight = len(suspects)
                    items = self._alone(task)
                yield items
            top_up()

    def _alone(self, task: FileTask) -> list[LoadedDoc | FileResult]:
        """Read ``task`` with nothing else in flight; a worker that dies now died of this file."""
        try:
            return self._submit(task).result()
        except BrokenProcessPool:
            self._restart()
            log.warning("%s: %s", task.ref.path, DIED)
            return [FileResult(task.ref, digest=task.digest, error=DIED)]


# -- in the worker ---------------------------------------------------------------------------------
_STATE: tuple[SentenceChunker, JsonlFields, LoaderLimits, Any] | None = None


def _start_worker(chunk: ChunkSpec, jsonl: JsonlFields, limits: LoaderLimits, redactor: Any, parent: int,
                  log_level: int) -> None:
    global _STATE
    _die_with(parent)
    configure_logging(log_level)
    _STATE = (SentenceChunker(chunk), jsonl, limits, redactor)


def _load(task: FileTask) -> list[LoadedDoc | FileResult]:
    assert _STATE is not None, "the worker's initializer sets it"
    chunker, jsonl, limits, redactor = _STATE
    return list(load_file(task, chunker, jsonl=jsonl, limits=limits, redactor=redactor))


def _die_with(parent: int) -> None:
    """Ask Linux to kill this process when ``parent`` (the ingest run) dies, and exit now if it has."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the worker ends when its queue closes instead
        return
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)
