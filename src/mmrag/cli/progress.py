"""What ``mmrag ingest`` shows while it runs, and each file's outcome when it is done.

On a terminal a tqdm bar names the file in work; off one (a log, a pipe, CI) a plain line every
few seconds gives files done/total, the rate and the file in work, so a long run is never silent.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Iterator, Sequence

from mmrag.loaders import DiscoveryProblem, FileRef
from mmrag.sources import ObjectRef
from mmrag.indexing.steps import FileResult, FileTask, Prepared

if TYPE_CHECKING:
    from mmrag.indexing import IngestSummary


class FileWatch:
    """An ingest engine that passes everything through from ``engine``, noting each file as it ends.

    It knows the file in work (the oldest planned file that has not ended: exactly the one the
    local engine is loading, which takes files in order) and what became of each file.

    Args:
        engine: the engine that does the work (local or Ray).
        found: what discovery found, files and problems, in order.
    """

    def __init__(self, engine: Any, found: Sequence[FileRef | ObjectRef | DiscoveryProblem]) -> None:
        self.engine = engine
        self.name = engine.name
        self.refs = [r for r in found if isinstance(r, (FileRef, ObjectRef))]
        self.problems = [p for p in found if isinstance(p, DiscoveryProblem)]
        self._doc_ids = {str(r.path): r.doc_id for r in self.refs}
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()  # current() is asked from the ingest thread and the progress thread
        #: Source path -> the file's end, for the files the engine worked on (the rest were unchanged).
        self.ended: dict[str, FileResult] = {}
        #: Source path -> documents of it that were embedded for writing.
        self.prepared: dict[str, int] = {}

    @property
    def startup_seconds(self) -> float:
        return float(self.engine.startup_seconds)

    def describe(self) -> dict[str, float]:
        """The wrapped engine's workers."""
        return dict(self.engine.describe())

    def run(self, tasks: Sequence[FileTask], indexer: Any) -> Iterator[FileResult | Prepared]:
        """Run ``engine`` on ``tasks``, yielding what it yields."""
        self._queue.extend(str(t.ref.path) for t in tasks)
        for item in self.engine.run(tasks, indexer):
            if isinstance(item, FileResult):
                self.ended[str(item.ref.path)] = item
            elif isinstance(item, Prepared):
                self.prepared[item.source] = self.prepared.get(item.source, 0) + 1
            yield item

    def current(self) -> str | None:
        """The doc id of the file in work, or None (before the engine starts, or while the last batch is written)."""
        with self._lock:
            while self._queue and self._queue[0] in self.ended:
                self._queue.popleft()
            return self._doc_ids.get(self._queue[0]) if self._queue else None


class Progress:
    """The ``progress`` callback of :meth:`mmrag.indexing.Indexer.ingest`, drawn as a bar or as lines.

    Use it as a context manager: off a terminal a thread prints a line every ``every`` seconds
    (also while one large file takes minutes, and while the models load); on one it redraws the
    bar every second with the file in work. The thread stops on exit.

    Args:
        watch: the engine wrapper that knows the file in work.
        stream: where to draw (stderr: stdout carries the summary and --json).
        every: seconds between lines off a terminal.
        bar: draw a bar on a terminal (False: nothing on a terminal, as with --json).
    """

    #: Seconds between redraws of the bar: tqdm draws only on an update, and one large file can take minutes.
    REDRAW = 1.0

    def __init__(self, watch: FileWatch, stream: IO[str], *, every: float = 5.0, bar: bool = True) -> None:
        self.watch = watch
        self.stream = stream
        self.every = every
        self.total = len(watch.refs)
        self.done = 0
        self._first: tuple[float, int] | None = None  # (time, files done) when the engine began
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        on_terminal = bool(getattr(stream, "isatty", lambda: False)())
        if on_terminal and bar:
            from tqdm import tqdm

            # disable=False: mmrag.logs sets TQDM_DISABLE for the libraries' own bars, not for this one.
            self._bar = tqdm(total=self.total, unit="file", file=stream, desc="ingest", dynamic_ncols=True,
                             disable=False)
        if self._bar is not None or not on_terminal:
            self._thread = threading.Thread(target=self._tick, name="mmrag-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()

    def __call__(self, done: int, total: int) -> None:
        if self._first is None:
            self._first = (time.monotonic(), done)  # files already unchanged count as done, not as speed
        self.done, self.total = done, total
        if self._bar is not None:
            self._bar.total = total
            current = self.watch.current()
            self._bar.set_postfix_str(current or "", refresh=False)
            self._bar.update(done - self._bar.n)

    def line(self) -> str:
        """One progress line: files done/total, the rate since the engine began, the file in work."""
        out = f"ingest: {self.done}/{self.total} files"
        if self._first is None:
            return out + f"; starting (loading models, checking the manifest) {time.monotonic() - self._started:.0f}s"
        since, done0 = self._first
        elapsed = time.monotonic() - since
        if elapsed > 0:
            out += f", {(self.done - done0) / elapsed:.2f} files/s over {elapsed:.0f}s"
        current = self.watch.current()
        if current is not None:
            out += f"; on {current}"
        elif self.done >= self.total:
            out += "; embedding and writing the last batch"
        return out

    def _tick(self) -> None:
        if self._bar is not None:
            while not self._stop.wait(self.REDRAW):
                self._bar.set_postfix_str(self.watch.current() or "", refresh=False)
                self._bar.refresh()  # under tqdm's lock, so it never interleaves with an update
            return
        while not self._stop.wait(self.every):
            print(self.line(), file=self.stream, flush=True)


def file_outcomes(watch: FileWatch, summary: IngestSummary) -> list[dict[str, Any]]:
    """Each file's outcome: ``indexed``, ``unchanged``, ``failed`` or ``skipped`` (with the reason).

    A JSONL file's bad lines are listed under it (``problems``); the file is ``indexed`` when any of
    its records were written, else ``unchanged``.
    """
    paths = {str(r.path) for r in watch.refs}
    of_file: dict[str, list[Any]] = {}
    of_line: dict[str, list[Any]] = {}  # a JSONL file's bad lines, reported as "path:line"
    refused: dict[str, list[Any]] = {}  # what discovery refused (missing paths, unsupported types)
    for problem in [*summary.failed, *summary.skipped]:
        if problem.path in paths:
            of_file.setdefault(problem.path, []).append(problem)
        elif problem.path.rpartition(":")[0] in paths:
            of_line.setdefault(problem.path.rpartition(":")[0], []).append(problem)
        else:
            refused.setdefault(problem.path, []).append(problem)
    out: list[dict[str, Any]] = []
    for ref in watch.refs:
        path = str(ref.path)
        entry: dict[str, Any] = {"path": path, "doc_id": ref.doc_id}
        problems = of_file.get(path)
        ended = watch.ended.get(path)
        if problems:
            status = "failed" if any(p.status == "failed" for p in problems) else "skipped"
            entry.update(outcome=status, reason="; ".join(p.reason for p in problems))
        elif ended is None or ended.unchanged_file or not watch.prepared.get(path):
            entry["outcome"] = "unchanged"
        else:
            entry["outcome"] = "indexed"
        if ref.suffix == ".jsonl":
            entry["documents"] = watch.prepared.get(path, 0) + (ended.unchanged if ended is not None else 0)
            if path in of_line:
                entry["problems"] = [{"line": p.path.rpartition(":")[2], "reason": p.reason} for p in of_line[path]]
        out.append(entry)
    for path, problems in refused.items():
        out.append({"path": path, "doc_id": None, "outcome": problems[0].status,
                    "reason": "; ".join(p.reason for p in problems)})
    return out
