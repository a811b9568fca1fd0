"""Loading in worker processes (mmrag.indexing.loadpool): the same documents as loading here, in
the plan's order; a worker that dies fails only its own file; no worker outlives a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image, ImageDraw, ImageFont

from mmrag.chunking import ChunkSpec, SentenceChunker
from mmrag.indexing.loadpool import DIED, LoadPool, loads_in_worker, plan_workers
from mmrag.indexing.steps import FileResult, FileTask, LoadedDoc, load_file
from mmrag.loaders import FileRef, JsonlFields, LoaderLimits

JSONL = JsonlFields("_id", "title", "text")
LINES = ["Invoice 2026-0417 from the harbour office", "Tide tables for the northern quay in March",
         "Minutes of the committee on bridge repairs", "A letter about the lighthouse keeper's pay"]


def _picture(path: Path, text: str) -> Path:
    image = Image.new("RGB", (1100, 220), "white")
    ImageDraw.Draw(image).text((30, 80), text, fill="black", font=ImageFont.load_default(size=40))
    image.save(path)
    return path


def _files(root: Path) -> list[Path]:
    root.mkdir()
    files = [_picture(root / f"scan{i}.png", line) for i, line in enumerate(LINES)]
    (root / "notes.txt").write_text("Plain notes stay in the ingest process; they hold no pixels.\n")
    files.insert(2, root / "notes.txt")
    return files


def _task(path: Path) -> FileTask:
    return FileTask(FileRef.from_path(path))


def _summary(items: Any) -> list[tuple[str, ...]]:
    out = []
    for item in items:
        if isinstance(item, LoadedDoc):
            out.append(("doc", item.doc.doc_id, *(c.text for c in item.chunks)))
        else:
            assert isinstance(item, FileResult)
            out.append(("file", str(item.ref.path), str(item.error), str(item.loaded)))
    return out


def test_plan_workers_takes_a_core_each_only_when_two_files_load_in_one(tmp_path: Path) -> None:
    files = _files(tmp_path / "in")
    tasks = [_task(f) for f in files]
    assert [loads_in_worker(t) for t in tasks] == [True, True, False, True, True]
    cores = len(os.sched_getaffinity(0))
    assert plan_workers(None, tasks) == (min(cores, 4) if cores >= 2 else 0)
    assert plan_workers(None, tasks[:1] + tasks[2:3]) == 0  # one picture and a text file: loaded here
    assert plan_workers(0, tasks) == 0 and plan_workers(3, tasks) == 3  # asked for: kept


def test_workers_load_what_this_process_loads_in_the_same_order(tmp_path: Path) -> None:
    files = _files(tmp_path / "in")
    tasks = [_task(f) for f in files]
    limits = LoaderLimits(ocr="always")
    chunker = SentenceChunker(ChunkSpec())

    def here(task: FileTask) -> Any:
        return load_file(task, chunker, jsonl=JSONL, limits=limits)

    expected = [row for task in tasks for row in _summary(here(task))]
    local_calls: list[str] = []

    def spy(task: FileTask) -> Any:
        local_calls.append(task.ref.path.name)
        return here(task)

    with LoadPool(2, chunk=ChunkSpec(), jsonl=JSONL, limits=limits) as pool:
        got = [row for items in pool.load(tasks, spy) for row in _summary(items)]
    assert got == expected
    assert local_calls == ["notes.txt"]  # only the text file loaded here
    assert any("harbour office" in " ".join(row) for row in got)  # the pictures were read by OCR


@dataclass(frozen=True)
class _Killer:
    """A file reference that kills the worker that unpickles it (as a crash in a decoder would)."""

    path: Path
    suffix: str = ".png"

    def __reduce__(self) -> Any:
        return (os._exit, (70,))


def test_a_worker_that_dies_fails_only_its_own_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = _files(tmp_path / "in")
    tasks = [_task(f) for f in files]
    tasks.insert(1, FileTask(_Killer(tmp_path / "in" / "poison.png")))  # type: ignore[arg-type]
    limits = LoaderLimits(ocr="always")
    chunker = SentenceChunker(ChunkSpec())

    def here(task: FileTask) -> Any:
        return load_file(task, chunker, jsonl=JSONL, limits=limits)

    with LoadPool(2, chunk=ChunkSpec(), jsonl=JSONL, limits=limits) as pool:
        got = [list(items) for items in pool.load(tasks, here)]
        restarts = pool.restarts
    assert len(got) == len(tasks)
    [poisoned] = got[1]
    assert isinstance(poisoned, FileResult) and poisoned.error == DIED
    for task, items in zip(tasks[:1] + tasks[2:], got[:1] + got[2:]):
        assert isinstance(items[-1], FileResult) and items[-1].error is None, task.ref.path
        assert items[-1].loaded == 1
    assert restarts >= 2  # the crash among others, then again when read alone
    assert "a load process died" in caplog.text and "poison.png" in caplog.text


@pytest.mark.slow
def test_no_load_worker_outlives_a_killed_ingest(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(12):
        _picture(folder / f"page{i}.png", f"{LINES[i % 4]} number {i}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "ingest", str(folder), "--profile", "offline",
                             "--data-dir", str(tmp_path / "data"), "--load-workers", "2", "--json"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
            workers = [c for c in parent.children(recursive=True) if "multiprocessing" in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert len(workers) >= 2, "the ingest never started its load workers"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert alive == [], f"load workers outlived the ingest: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
