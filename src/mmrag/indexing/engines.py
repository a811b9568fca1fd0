"""Where an ingest run loads, chunks and embeds: the :class:`Engine` protocol and the in-process engine.

An engine runs the planned files' work (:mod:`mmrag.indexing.steps`) and yields what the driver
(:class:`~mmrag.indexing.driver.Indexer`) writes; :class:`mmrag.indexing.ray.RayEngine` is the other one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, Sequence

from mmrag.indexing.loadpool import LoadPool, plan_workers
from mmrag.indexing.steps import FileResult, FileTask, LoadedDoc, Prepared, embed_documents, load_file
from mmrag.tracing import span

if TYPE_CHECKING:
    from mmrag.indexing.driver import Indexer

#: Items (chunks + images) embedded together (the writer writes several such batches at once).
FLUSH_ITEMS = 256


class Engine(Protocol):
    """Runs the planned files' work and yields, in any order, their documents and their ends.

    An engine never touches the manifest or a store; the :class:`Indexer` applies what it yields.
    """

    name: str

    def run(self, tasks: Sequence[FileTask], indexer: "Indexer") -> Iterator[FileResult | Prepared]: ...

    def describe(self) -> dict[str, float]:
        """Worker counts for the summary."""
        ...

    @property
    def startup_seconds(self) -> float: ...


class LocalEngine:
    """Embeds in this process; loads here, or PDFs, Office files and images in worker processes.

    Args:
        load_workers: processes that load PDFs, Office files and images while this one embeds
            (:mod:`mmrag.indexing.loadpool`); ``None`` for one per core when a run has two such
            files or more. The default, 0, loads everything here: what the server's
            uploads do, so that requests never start processes; ``mmrag ingest`` passes
            ``--load-workers`` (``None`` unless given).
    """

    name = "local"
    startup_seconds = 0.0

    def __init__(self, load_workers: int | None = 0) -> None:
        self.load_workers = load_workers
        self._planned = 0

    def describe(self) -> dict[str, float]:
        return {"embed": 1, "load": float(self._planned), "cpus": float(os.cpu_count() or 1)}

    def run(self, tasks: Sequence[FileTask], indexer: "Indexer") -> Iterator[FileResult | Prepared]:
        def here(task: FileTask) -> Iterator[LoadedDoc | FileResult]:
            return load_file(task, indexer.chunker, jsonl=indexer.jsonl, limits=indexer.limits,
                             redactor=indexer.redactor)

        self._planned = plan_workers(self.load_workers, tasks)
        if not self._planned:
            yield from self._embed_files((here(task) for task in tasks), indexer)
            return
        with LoadPool(self._planned, chunk=indexer.kb.chunk_spec, jsonl=indexer.jsonl, limits=indexer.limits,
                      redactor=indexer.redactor) as pool:
            yield from self._embed_files(pool.load(tasks, here), indexer)

    def _embed_files(self, files: Iterable[Iterable[LoadedDoc | FileResult]], indexer: "Indexer"
                     ) -> Iterator[FileResult | Prepared]:
        buffer: list[LoadedDoc] = []
        items = 0
        for loaded in files:
            for item in loaded:
                if isinstance(item, LoadedDoc):
                    buffer.append(item)
                    items += item.items
                    if items >= FLUSH_ITEMS:
                        yield from _embed(buffer, indexer)
                        buffer, items = [], 0
                else:
                    yield item
        yield from _embed(buffer, indexer)


def _embed(buffer: list[LoadedDoc], indexer: "Indexer") -> list[Prepared]:
    with span("ingest.embed", collection=indexer.kb.collection, documents=len(buffer),
              items=sum(d.items for d in buffer)):
        return embed_documents(buffer, indexer.kb)
