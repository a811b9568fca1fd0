"""`mmrag ingest --engine ray` on a local 2-CPU Ray: the same end state as the local engine, through
a killed driver and a killed embedding actor (issue 10, acceptance 1-3).

One corpus of 600+ items (easy-vqa images, PDFs with embedded images, a JSONL corpus, the sample
corpus), one uninterrupted local-engine ingest as the reference, then Ray runs compared with it:
record ids, metadata, texts, manifest rows, keyword rows, and vectors at cosine > 0.999. Ray starts
slowly here, so the runs are few and each does a lot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.indexing.test_kill_resume import _assert_same, _done_count, _snapshot
from tests.conftest import SAMPLE_CORPUS

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.long]
ray = pytest.importorskip("ray", reason="the Ray engine's tests need mmrag[ray]")

N_IMAGES = 300
# Enough records for several writes: a write holds 1,024 records (indexing.writer.WRITE_ITEMS), and
# with fewer the whole run became durable in its last write, so no kill by progress landed mid-run.
N_RECORDS = 1500
N_PDFS = 6


def _corpus(root: Path) -> tuple[Path, int]:
    import easy_vqa

    images = root / "images"
    images.mkdir(parents=True)
    for iid, path in sorted(easy_vqa.get_test_image_paths().items())[:N_IMAGES]:
        shutil.copy(path, images / f"{iid}.png")
    pdfs = root / "pdfs"
    pdfs.mkdir()
    for n in range(N_PDFS):  # the catalogue has a text layer and embedded images
        shutil.copy(SAMPLE_CORPUS / "signs-catalogue.pdf", pdfs / f"catalogue-{n}.pdf")
    shutil.copytree(SAMPLE_CORPUS, root / "sample")
    lines = [json.dumps({"_id": f"rec{i}", "title": f"Record {i}",
                         "text": f"Record {i} describes shipment {i * 7 % 101} sent to warehouse {i % 13}. "
                                 f"It weighed {i % 50 + 1} kilograms and arrived on day {i % 28 + 1}."})
             for i in range(N_RECORDS)]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")
    files = N_IMAGES + N_PDFS + N_RECORDS + sum(1 for p in (root / "sample").rglob("*") if p.is_file())
    return root, files


def _env(data_dir: Path) -> dict[str, str]:
    # One torch thread per process: the driver, the load tasks and the actor share these 2 cores.
    # CLIP in fp32: the comparison is of engines, to float noise. Under auto, each process times the
    # numerics for its own thread count (the Ray actor's differs from the driver's), and on a busy
    # machine the local run kept bf16 text while the actor kept int8 (cosines down to 0.97).
    return {**os.environ, "MMRAG_DATA_DIR": str(data_dir), "MMRAG_PROFILE": "offline", "OMP_NUM_THREADS": "1",
            "MMRAG_TORCH_THREADS": "1", "RAY_DEDUP_LOGS": "0", "MMRAG_CLIP__PRECISION": "fp32"}


def _ingest(corpus: Path, data_dir: Path, *extra: str) -> subprocess.Popen:  # type: ignore[type-arg]
    """Start an ingest; its output goes to files beside the data dir (a pipe could fill and block it)."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    out = open(f"{data_dir}.out", "wb")  # noqa: SIM115 - closed by _finish
    err = open(f"{data_dir}.err", "wb")  # noqa: SIM115
    # OCR is off: it is the loaders' work, the same in both engines (tests/loaders/test_ocr*.py), and
    # its detector on every image would triple these runs.
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "ingest", str(corpus), "--json", "--ocr", "never", *extra],
                            env=_env(data_dir), stdout=out, stderr=err)
    proc.files = (out, err)  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, data_dir: Path, timeout: float = 900) -> dict[str, Any]:  # type: ignore[type-arg]
    """Wait for an ingest; return its JSON summary (it must have succeeded)."""
    rc = proc.wait(timeout=timeout)
    for f in proc.files:  # type: ignore[attr-defined]
        f.close()
    err = Path(f"{data_dir}.err").read_text(errors="replace")
    assert rc == 0, err[-3000:]
    return json.loads(Path(f"{data_dir}.out").read_text())  # type: ignore[no-any-return]


def _run(corpus: Path, data_dir: Path, *extra: str) -> dict[str, Any]:
    return _finish(_ingest(corpus, data_dir, *extra), data_dir)


def _ray_processes(since: float) -> dict[int, str]:
    """Ray's processes started after ``since`` (this test's), by pid."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["create_time"] >= since - 1 and ("ray::" in cmd or "/ray/core/src/ray/" in cmd
                                                       or "ray/_private/" in cmd or "ray/dashboard/" in cmd):
            found[proc.info["pid"]] = cmd
    return found


def _reap(since: float) -> None:
    """Kill what a SIGKILLed driver's local Ray left behind (its agents exit on their own, slowly)."""
    for pid in _ray_processes(since):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ray")
    corpus, files = _corpus(root / "corpus")
    summary = _run(corpus, root / "local")
    assert summary["engine"] == "local" and not summary["failed"], summary
    snap = _snapshot(root / "local")
    items = len(snap["default-text"]["ids"]) + len(snap["default-image"]["ids"])
    assert items >= 500, items
    return {"root": root, "corpus": corpus, "files": files, "snapshot": snap, "summary": summary}


def test_ray_ingest_equals_the_local_ingest(reference: dict[str, Any]) -> None:
    root, corpus = reference["root"], reference["corpus"]
    summary = _run(corpus, root / "ray", "--engine", "ray")
    assert summary["engine"] == "ray" and summary["workers"]["embed"] == 1 and summary["workers"]["cpus"] == 2
    assert summary["startup_seconds"] > 0
    local = reference["summary"]
    for key in ("files_seen", "indexed", "unchanged", "embeddings", "failed", "skipped", "warnings"):
        assert summary[key] == local[key], key
    _assert_same(_snapshot(root / "ray"), reference["snapshot"], "ray vs local")
    again = _run(corpus, root / "ray", "--engine", "ray")  # nothing changed: nothing is embedded
    assert again["embeddings"] == {"clip": 0, "text": 0} and again["unchanged"] == local["indexed"]


@pytest.mark.parametrize("rerun_engine", ["local", "ray"])
def test_a_killed_ray_driver_resumes_with_either_engine(reference: dict[str, Any], rerun_engine: str) -> None:
    root, corpus = reference["root"], reference["corpus"]
    data_dir = root / f"killed-{rerun_engine}"
    total = reference["summary"]["indexed"]
    since = time.time()
    proc = _ingest(corpus, data_dir, "--engine", "ray")
    target = total // 3  # by progress, as in the local kill test: a third of the documents written
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and _done_count(data_dir) < target:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for f in proc.files:  # type: ignore[attr-defined]
        f.close()
    at_kill = _done_count(data_dir)
    assert 0 < at_kill < total, at_kill
    _reap(since)
    extra = ("--engine", "ray") if rerun_engine == "ray" else ()
    resumed = _run(corpus, data_dir, *extra)
    assert resumed["indexed"] + resumed["unchanged"] >= total and resumed["unchanged"] >= at_kill - 256
    _assert_same(_snapshot(data_dir), reference["snapshot"], f"killed at {at_kill}/{total}, rerun {rerun_engine}")
    again = _run(corpus, data_dir, *extra)
    assert again["embeddings"] == {"clip": 0, "text": 0}


def test_a_killed_embedding_actor_is_restarted_and_the_run_completes(reference: dict[str, Any]) -> None:
    root, corpus = reference["root"], reference["corpus"]
    data_dir = root / "actor-killed"
    total = reference["summary"]["indexed"]
    since = time.time()
    proc = _ingest(corpus, data_dir, "--engine", "ray")
    deadline = time.monotonic() + 600
    victim = None
    seen_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        # Killed a second after it appears, while it embeds: the writes trail the embedding (a write
        # holds 1,024 records), so waiting for written documents let it finish its work first.
        actors = [pid for pid, cmd in _ray_processes(since).items() if "MapWorker" in cmd]
        seen_at = seen_at or (time.monotonic() if actors else None)
        if actors and time.monotonic() - seen_at >= 1.0:
            victim = actors[0]
            break
        time.sleep(0.05)
    assert victim is not None and proc.poll() is None, "no embedding actor was found while the run was going"
    done_at_kill = _done_count(data_dir)
    os.kill(victim, signal.SIGKILL)
    import psutil

    dead = not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    replacements: set[int] = set()
    while proc.poll() is None and time.monotonic() < deadline:  # Ray starts another actor for the rest
        replacements |= {pid for pid, cmd in _ray_processes(since).items() if "MapWorker" in cmd and pid != victim}
        dead = dead or not psutil.pid_exists(victim)
        time.sleep(0.1)
    summary = _finish(proc, data_dir)
    # The kill landed: mid-run, on the actor, and another actor finished the work.
    assert done_at_kill < total and dead, (done_at_kill, dead)
    assert replacements, "Ray did not start a replacement actor"
    assert summary["indexed"] + summary["unchanged"] == total
    _assert_same(_snapshot(data_dir), reference["snapshot"], "actor killed")
