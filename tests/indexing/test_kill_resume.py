"""Acceptance 3: SIGKILL `mmrag ingest` at random moments on 1,000+ items, some of them inside a
keyword-index write; each rerun ends identical to an uninterrupted run (same ids, same counts, same
vectors, same keyword rows, no duplicates)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.long]
# Read at import: the autouse fixture in conftest.py clears MMRAG_* variables before each test.
KILL_SEED = os.environ.get("MMRAG_KILL_SEED")
N_IMAGES = 500
N_RECORDS = 600


def _corpus(root: Path) -> Path:
    import easy_vqa

    images = root / "images"
    images.mkdir(parents=True)
    for iid, path in sorted(easy_vqa.get_test_image_paths().items())[:N_IMAGES]:
        shutil.copy(path, images / f"{iid}.png")
    lines = [json.dumps({"_id": f"rec{i}", "title": f"Record {i}",
                         "text": f"Record {i} describes shipment {i * 7 % 101} sent to warehouse {i % 13}. "
                                 f"It weighed {i % 50 + 1} kilograms and arrived on day {i % 28 + 1}."})
             for i in range(N_RECORDS)]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")
    return root


#: ``python -m mmrag`` with smaller write batches. The product's batch (4 slices of 1,024 records,
#: indexing.writer) would hold this whole corpus: every document would be marked done in one step at
#: the end, and no kill could land between two batches. 64-record slices make batches of 256.
SMALL_BATCHES = "from mmrag.indexing import writer; writer.WRITE_ITEMS = 64; from mmrag.cli import main; main()"


def _ingest(corpus: Path, data_dir: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    """Start an ingest whose output goes to files beside ``data_dir`` (read them with :func:`_output`).

    Not pipes: while the test polls the manifest it reads neither, and the child's progress lines
    filled a pipe and blocked it mid-run (each kill phase then waited out its 600 s deadline).
    """
    env = {**os.environ, "MMRAG_DATA_DIR": str(data_dir), "MMRAG_PROFILE": "offline"}
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(_log(data_dir, "out"), "wb") as out, open(_log(data_dir, "err"), "wb") as err:
        return subprocess.Popen([sys.executable, "-c", SMALL_BATCHES, "ingest", str(corpus), "--json"], env=env,
                                stdout=out, stderr=err)


def _log(data_dir: Path, stream: str) -> Path:
    return data_dir.parent / f"{data_dir.name}.{stream}"


def _finish(proc: subprocess.Popen, data_dir: Path) -> tuple[int, str, str]:  # type: ignore[type-arg]
    """Wait for the ingest to end: (exit code, stdout, stderr)."""
    rc = proc.wait(timeout=900)
    return rc, _log(data_dir, "out").read_text(), _log(data_dir, "err").read_text()


def _done_count(data_dir: Path) -> int:
    import sqlite3

    if not (data_dir / "manifest.sqlite3").exists():
        return 0
    db = sqlite3.connect(data_dir / "manifest.sqlite3")
    try:
        return int(db.execute("SELECT COUNT(*) FROM documents WHERE status='done'").fetchone()[0])
    except sqlite3.OperationalError:  # the file exists but the ingest has not created its tables yet
        return 0
    finally:
        db.close()


def _snapshot(data_dir: Path) -> dict:  # type: ignore[type-arg]
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(data_dir / "chroma"), settings=Settings(anonymized_telemetry=False))
    out: dict = {}
    for name in ("default-clip", "default-image", "default-text"):
        col = client.get_collection(name, embedding_function=None)
        got = col.get(include=["embeddings", "metadatas", "documents"])
        order = np.argsort(got["ids"])
        out[name] = {
            "ids": [got["ids"][i] for i in order],
            "meta": [got["metadatas"][i] for i in order],
            "docs": [got["documents"][i] for i in order],
            "vecs": np.asarray(got["embeddings"])[order],
        }
    import sqlite3

    db = sqlite3.connect(data_dir / "manifest.sqlite3")
    out["manifest"] = db.execute(
        "SELECT doc_id, content_hash, status, n_clip, n_text FROM documents ORDER BY doc_id").fetchall()
    db.close()
    from mmrag.stores.tantivy import TantivyKeywordIndex

    out["bm25"] = list(TantivyKeywordIndex(data_dir / "keyword" / "default").rows())
    return out


def _keyword_files(data_dir: Path) -> set[str]:
    folder = data_dir / "keyword" / "default"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _uncommitted_segments(data_dir: Path) -> set[str]:
    """Segment files tantivy wrote that its meta.json does not list: a write cut before its commit."""
    folder = data_dir / "keyword" / "default"
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return set()
    committed = {seg["segment_id"].replace("-", "") for seg in meta.get("segments", [])}
    return {p.stem for p in folder.iterdir() if "." in p.name and len(p.stem) == 32 and p.stem not in committed}


def _kill_inside_a_keyword_write(proc: subprocess.Popen, data_dir: Path, deadline: float) -> int:  # type: ignore[type-arg]
    """SIGKILL ``proc`` while tantivy has written a segment that its meta.json does not list yet.

    A commit takes milliseconds, so a kill sent when a new file shows up usually lands after it.
    Instead the process is stopped (SIGSTOP) as soon as a new file appears; if the segment is not
    committed yet, it is killed there, else it continues until the next write. Returns 1 if it
    was killed inside a write.
    """
    known = _keyword_files(data_dir)
    while proc.poll() is None and time.monotonic() < deadline:
        now = _keyword_files(data_dir)
        if not now - known:
            time.sleep(0.0005)
            continue
        proc.send_signal(signal.SIGSTOP)
        if _uncommitted_segments(data_dir):
            proc.send_signal(signal.SIGKILL)
            proc.send_signal(signal.SIGCONT)
            return 1
        known = _keyword_files(data_dir)
        proc.send_signal(signal.SIGCONT)
    return 0


def _assert_same(a: dict, b: dict, context: str) -> None:  # type: ignore[type-arg]
    assert a["manifest"] == b["manifest"], context
    assert a["bm25"] == b["bm25"], context
    for name in ("default-clip", "default-image", "default-text"):
        assert a[name]["ids"] == b[name]["ids"], context
        assert len(set(a[name]["ids"])) == len(a[name]["ids"]), "duplicates"
        assert a[name]["meta"] == b[name]["meta"], context
        assert a[name]["docs"] == b[name]["docs"], context
        # Same vectors up to float noise: batch composition differs after a resume, and bf16/oneDNN
        # kernels may round a row differently in another batch.
        cos = (a[name]["vecs"] * b[name]["vecs"]).sum(-1)
        assert cos.min() > 0.999, f"{context}: {name} vectors differ (min cosine {cos.min():.5f})"


def test_sigkill_at_random_moments_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    reference = tmp_path / "reference"
    rc, out, err = _finish(_ingest(corpus, reference), reference)
    assert rc == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["indexed"] == N_IMAGES + N_RECORDS
    expected = _snapshot(reference)
    assert len(expected["default-clip"]["ids"]) + len(expected["default-image"]["ids"]) >= 1000

    seed = int(KILL_SEED or time.time())
    rng = random.Random(seed)
    killed = tmp_path / "killed"
    total = N_IMAGES + N_RECORDS
    # One kill at a random moment of start-up (model loading, discovery), then kills at random
    # points of the writing phase: wait until a random share of the documents is done, then a
    # random extra moment, so the kill can land inside a batch's delete/upsert/manifest steps.
    # Shares stay under half of what remains and the extra moment under half a second: a batch
    # holds up to 256 documents, so a later target could sit inside the run's last batch and the
    # run would finish before the kill (seen in CI), leaving no kill inside the writing phase.
    plans = [("startup", rng.uniform(0.2, 3.0), 0.0)]
    # Kills aimed inside a keyword-index write come early: discovery yields the JSONL (the only
    # text) before the images folder, so later batches write no keyword rows.
    plans += [("keyword", 0.0, rng.uniform(0.0, 0.1)) for _ in range(2)]
    plans += [("writing", rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.5)) for _ in range(4)]
    kills, mid_run, in_keyword = 0, 0, 0
    for phase, extra, share in plans:
        base = _done_count(killed)
        target = base + max(1, int(share * (total - base))) if phase != "startup" else 0
        proc = _ingest(corpus, killed)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline and _done_count(killed) < target:
            time.sleep(0.02)
        if phase == "keyword" and _kill_inside_a_keyword_write(proc, killed, deadline):
            proc.wait()
            kills, in_keyword = kills + 1, in_keyword + 1
            mid_run += 0 < _done_count(killed) < total
        else:
            try:
                proc.wait(timeout=extra)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                mid_run += phase != "startup" and 0 < _done_count(killed) < total
    print(f"kill seed {seed}: {kills} kills, {mid_run} while writing, {in_keyword} inside a keyword-index write")
    assert kills >= 2, f"too few runs were killed (seed {seed})"
    assert mid_run >= 1, f"no kill landed while documents were being written (seed {seed})"
    assert in_keyword >= 1, f"no kill landed inside a keyword-index write (seed {seed})"
    rc, out, err = _finish(_ingest(corpus, killed), killed)
    assert rc == 0, err[-2000:]
    _assert_same(_snapshot(killed), expected, f"kill seed {seed}")
    # And a further rerun computes nothing.
    rc, out, err = _finish(_ingest(corpus, killed), killed)
    assert rc == 0, err[-2000:]
    again = json.loads(out)
    assert again["embeddings"] == {"clip": 0, "text": 0}
