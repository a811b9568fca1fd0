"""Issue 8, fault injection: a Chroma server killed mid-ingest, a full disk, a damaged keyword index.

Each fault is injected for real (SIGKILL, a small tmpfs, truncated files), never mocked. Work that
touches an embedded store runs in child processes (:func:`child`), so the test process never holds
the store's one-process claim, a full disk cannot take pytest down with it, and every check reads
what is on disk through a fresh open.

A truncated Chroma file is covered by tests/stores/test_store_safety.py.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.helpers.faults import ChromaServer, child_env, grow_tmpfs, marker

COLLECTION = "test"
_WORDS = ("alpha beta gamma delta harbour lantern river stone cloud meadow copper violet ember signal orbit "
          "granite willow falcon saffron quartz").split()


def write_corpus(folder: Path, prefix: str, n: int, words: int, seed: int) -> list[str]:
    """``n`` text files, each with a unique :func:`marker` and ``words`` random words; returns the markers."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    markers = []
    for i in range(n):
        token = marker(prefix, i)
        body = " ".join(f"{rng.choice(_WORDS)}{rng.randint(0, 9999)}" for _ in range(words))
        (folder / f"{prefix}{i:04d}.txt").write_text(f"Document {token} of the {prefix} corpus. {body}\n")
        markers.append(token)
    return markers


# -- a child process on a hashing knowledge base ------------------------------------------------------
def child(argv: list[str]) -> None:
    """Entry point of a child process: ``ACTION DATA_DIR [ARGS...]``; prints one JSON line.

    ``ingest DATA PATH...`` ingests; ``inspect DATA TOKEN...`` reports the manifest, the records
    and keyword rows of each document, health, and the top BM25 and text-model hit of each token.
    A mmrag error is printed as ``{"error", "message"}`` with exit status 1, as the CLI does.
    """
    from mmrag.config import Settings
    from mmrag.embedders.hashing import HashingEmbedder
    from mmrag.errors import MmragError
    from mmrag.indexing import Indexer
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models
    from mmrag.retrieval import Searcher
    from mmrag.types import Query

    action, data_dir, args = argv[0], Path(argv[1]), argv[2:]
    kb = KnowledgeBase(data_dir, COLLECTION, resolve_models(Settings()), clip=HashingEmbedder(16),
                       text=HashingEmbedder(8))
    try:
        if action == "ingest":
            out: dict[str, Any] = {"summary": Indexer(kb).ingest([Path(p) for p in args]).to_dict()}
        elif action == "bm25":  # reads the manifest and the keyword index only, never Chroma
            searcher = Searcher(kb)
            out = {"manifest": {r.doc_id: [r.status, r.n_clip, r.n_text] for r in kb.manifest.all(COLLECTION)},
                   "rows": kb.keyword.doc_counts(),
                   "top": {t: [h.doc_id for h in searcher.search(Query(text=t), 1, retriever="bm25")] for t in args}}
        else:
            rows = list(kb.manifest.all(COLLECTION))
            ids = [r.doc_id for r in rows]
            per_doc: dict[str, list[int]] = {d: [0, 0, 0] for d in ids}
            for slot, which in enumerate(("clip", "text")):
                for _, meta, _ in kb.bare_store(which).records_of(ids):
                    per_doc.setdefault(str(meta["doc_id"]), [0, 0, 0])[slot] += 1
            for doc_id, n in kb.keyword.doc_counts().items():
                per_doc.setdefault(doc_id, [0, 0, 0])[2] = n
            searcher = Searcher(kb)
            top = {}
            for token in args:
                # BM25 finds the token's document; the vector indexes are asked with that document's
                # first chunk, the one query a hashing embedding answers (it hashes the whole text).
                found = [h.doc_id for h in searcher.search(Query(text=token), 1, retriever="bm25")]
                chunk = next((d for _, _, d in kb.bare_store("text").records_of(found, ("metadatas", "documents"))), None)
                top[token] = found[:1] + [
                    next((h.doc_id for h in searcher.search(Query(text=chunk), 1, retriever=r)), None) if chunk else None
                    for r in ("text", "clip")]
            health = kb.health()
            out = {"manifest": {r.doc_id: [r.status, r.n_clip, r.n_text] for r in rows}, "stored": per_doc,
                   "top": top, "problems": health.problems, "have": list(health.have), "want": list(health.want)}
    except MmragError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        sys.exit(1)
    print(json.dumps(out))


def run_child(*argv: str | Path, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    """Run :func:`child` in a new process: (exit status, its JSON, its stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.indexing.test_fault_injection import child; child(sys.argv[1:])",
         *map(str, argv)], env=child_env(), capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if lines else {}
    except ValueError:
        out = {}
    return done.returncode, out, done.stderr


def assert_settled_documents_are_whole(state: dict[str, Any]) -> None:
    """Every done (or failed-but-kept) document has exactly the records and keyword rows its row says."""
    for doc_id, (status, n_clip, n_text) in state["manifest"].items():
        if status != "pending":
            assert state["stored"][doc_id] == [n_clip, n_text, n_text], (doc_id, status)


# -- 1a: the Chroma server killed mid-ingest ---------------------------------------------------------
#: Small text files (one chunk each) and easy-vqa images (one CLIP record each): 256 documents per
#: write batch, so the run writes six batches after its models load, for several seconds.
N_TEXTS = 1200
N_IMAGES = 200


def _server_corpus(root: Path) -> Path:
    import easy_vqa

    write_corpus(root / "texts", "served", N_TEXTS, 25, seed=4)
    images = root / "images"
    images.mkdir()
    for iid, path in sorted(easy_vqa.get_test_image_paths().items())[:N_IMAGES]:
        shutil.copy(path, images / f"{iid}.png")
    return root


def _ingest_cli(corpus: Path, data: Path, url: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = data.parent / f"{data.name}-ingest.out", data.parent / f"{data.name}-ingest.err"
    # Output goes to files, not pipes: nothing reads a pipe while the test polls, and a full one would block the ingest.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "ingest", str(corpus), "--store-url", url, "--profile", "offline", "--json"],
        env=child_env(MMRAG_DATA_DIR=str(data)), stdout=out.open("wb"), stderr=err.open("wb"))
    return proc, out, err


def _ingest_to_end(corpus: Path, data: Path, url: str) -> dict[str, Any]:
    proc, out, err = _ingest_cli(corpus, data, url)
    assert proc.wait(timeout=900) == 0, err.read_text()[-3000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def _manifest_rows(data: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(data / "manifest.sqlite3")
    try:
        return db.execute("SELECT doc_id, content_hash, status, reason, n_clip, n_text FROM documents "
                          "ORDER BY doc_id").fetchall()
    except sqlite3.OperationalError:  # the file exists but its tables are not created yet
        return []
    finally:
        db.close()


def _done_count(data: Path) -> int:
    if not (data / "manifest.sqlite3").exists():
        return 0
    return sum(1 for row in _manifest_rows(data) if row[2] == "done")


def _served_kb(data: Path, url: str) -> Any:
    from mmrag.config import Settings
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models

    return KnowledgeBase(data, "default", resolve_models(Settings(profile="offline")), store_url=url)


def _collections(url: str) -> dict[str, Any]:
    """Every collection on the server (however mmrag lays the knowledge base out in them)."""
    import chromadb
    from chromadb.config import Settings

    parsed = urlparse(url)
    client = chromadb.HttpClient(host=parsed.hostname, port=parsed.port,
                                 settings=Settings(anonymized_telemetry=False))
    names = sorted(c if isinstance(c, str) else c.name for c in client.list_collections())
    return {name: client.get_collection(name, embedding_function=None) for name in names}


def _server_snapshot(data: Path, url: str) -> dict[str, Any]:
    cols = _collections(url)
    out: dict[str, Any] = {"manifest": _manifest_rows(data), "collections": sorted(cols),
                           "keyword": [list(row) for row in _served_kb(data, url).keyword.rows()]}
    for name, col in cols.items():
        got = col.get(include=["embeddings", "metadatas", "documents"])
        order = np.argsort(got["ids"])
        out[name] = {"ids": [got["ids"][i] for i in order], "meta": [got["metadatas"][i] for i in order],
                     "docs": [got["documents"][i] for i in order], "vecs": np.asarray(got["embeddings"])[order]}
    return out


@pytest.mark.slow
@pytest.mark.long  # 90 s on CI; the other fault tests here cover kill -9 of the ingest itself
def test_chroma_server_killed_mid_ingest_then_restarted_and_rerun_ends_as_an_uninterrupted_run(
        tmp_path: Path, chroma_servers: list[ChromaServer]) -> None:
    corpus = _server_corpus(tmp_path / "corpus")
    total = N_TEXTS + N_IMAGES

    # The reference: an uninterrupted run into a server and data dir of its own.
    reference = ChromaServer(tmp_path / "reference-server")
    chroma_servers.append(reference)
    ref_url = reference.start()
    assert _ingest_to_end(corpus, tmp_path / "reference", ref_url)["indexed"] == total
    expected = _server_snapshot(tmp_path / "reference", ref_url)
    reference.stop()

    server = ChromaServer(tmp_path / "server")
    chroma_servers.append(server)
    data = tmp_path / "data"
    proc, _, err_file = _ingest_cli(corpus, data, server.start())
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and _done_count(data) == 0:
        time.sleep(0.02)
    assert proc.poll() is None, f"the ingest ended (status {proc.returncode}) before any document was done"
    server.kill()
    killed_at = time.monotonic()
    rc = proc.wait(timeout=300)
    stderr = err_file.read_text()
    print(f"\nchroma server killed with {_done_count(data)} of {total} documents done; the ingest exited "
          f"{rc} {time.monotonic() - killed_at:.1f} s later: {stderr.strip().splitlines()[-1:]}")

    # The job says the store failed, in one message, and exits 1 (an error, not a partial run).
    assert rc == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert re.search(r"Error: StoreError: Chroma failed to \w+", stderr), stderr[-3000:]

    # The batch being written stays pending; nothing is wrongly done.
    rows = _manifest_rows(data)
    statuses = [row[2] for row in rows]
    assert set(statuses) <= {"done", "pending"}, rows
    assert 0 < statuses.count("done") < total and statuses.count("pending") > 0, statuses
    url = server.start()  # the same --path, after the crash
    kb = _served_kb(data, url)
    done = {row[0]: (row[4], row[5]) for row in rows if row[2] == "done"}
    for which, slot in (("clip", 0), ("text", 1)):
        have: dict[str, int] = {}
        for _, meta, _ in kb.bare_store(which).records_of(sorted(done)):
            have[str(meta["doc_id"])] = have.get(str(meta["doc_id"]), 0) + 1
        assert {d: have.get(d, 0) for d in done} == {d: n[slot] for d, n in done.items()}, which
    rows_of = kb.keyword.doc_counts()
    assert {d: rows_of.get(d, 0) for d in done} == {d: n[1] for d, n in done.items()}

    # A rerun against the restarted server finishes the job, and ends as the uninterrupted run did.
    summary = _ingest_to_end(corpus, data, url)
    assert summary["indexed"] == total - len(done) and summary["failed"] == [], summary
    got = _server_snapshot(data, url)
    print(f"rerun after the restart: indexed {summary['indexed']}, repaired {summary['repaired']}; collections "
          + ", ".join(f"{n} {len(got[n]['ids'])}" for n in got["collections"]))
    assert got["manifest"] == expected["manifest"]
    assert got["keyword"] == expected["keyword"]
    assert got["collections"] == expected["collections"] and len(expected["collections"]) >= 2
    for name in expected["collections"]:
        assert got[name]["ids"] == expected[name]["ids"], name
        assert got[name]["meta"] == expected[name]["meta"], name
        assert got[name]["docs"] == expected[name]["docs"], name
        # Equal up to float noise: the batches of a resumed run hold other documents.
        cos = (got[name]["vecs"] * expected[name]["vecs"]).sum(-1)
        assert cos.min() > 0.999, f"{name}: vectors differ (min cosine {cos.min():.5f})"
    assert _served_kb(data, url).health().problems == []


# -- 1b: a full disk --------------------------------------------------------------------------------
#: Files of about 3 KB: chroma keeps each chunk's text in both collections and in its own full-text
#: index, so ~200 of them fill the 16 MiB tmpfs, where the first corpus took about 0.4 MiB.
LARGE_FILES = 600


@pytest.mark.slow
def test_disk_full_is_reported_loses_nothing_stored_and_a_rerun_after_freeing_space_completes(
        tmp_path: Path, small_tmpfs: tuple[Path, str]) -> None:
    disk, _ = small_tmpfs
    small, large = tmp_path / "small", tmp_path / "large"
    small_markers = write_corpus(small, "firstcorpus", 10, 40, seed=1)
    large_markers = write_corpus(large, "bigcorpus", LARGE_FILES, 300, seed=2)
    data = disk / "data"
    rc, out, err = run_child("ingest", data, small)
    assert rc == 0 and out["summary"]["indexed"] == 10, err[-3000:]
    rc, out, err = run_child("ingest", data, large)

    # The job reports the failure as a store error (exit status 1) that names the disk, not a crash
    # or a traceback. (Chroma's own words are "Error in compaction: Failed to apply logs to the
    # metadata segment"; the hint about the disk is mmrag's.)
    assert rc == 1 and out.get("error") == "StoreError", (rc, out, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert re.search(r"disk|no space", out["message"], re.I), out["message"]
    print(f"\ndisk full: {out['message']}")
    assert shutil.disk_usage(disk).free < 4 * 1024 * 1024, "the ingest did not fill the disk"

    # While the disk is full, keyword search still answers (it reads only the keyword index and the
    # manifest). Chroma does not: its reads first apply its write log, which needs disk space.
    rc, state, err = run_child("bm25", data, *small_markers)
    assert rc == 0, (state, err[-3000:])
    for i, token in enumerate(small_markers):
        doc_id = f"firstcorpus{i:04d}.txt"
        assert state["manifest"][doc_id][0] == "done" and state["top"][token] == [doc_id], token
        assert state["rows"][doc_id] == state["manifest"][doc_id][2], doc_id

    # Nothing already stored is lost: once there is space again, a fresh process reads back every
    # record of the first corpus (before any rerun could have repaired anything).
    grow_tmpfs(disk, "512M")
    rc, state, err = run_child("inspect", data, *small_markers)
    assert rc == 0, (state, err[-3000:])
    for i, token in enumerate(small_markers):
        doc_id = f"firstcorpus{i:04d}.txt"
        status, n_clip, n_text = state["manifest"][doc_id]
        assert status == "done" and n_clip >= 1 and n_text >= 1, doc_id
        assert state["top"][token] == [doc_id, doc_id, doc_id], token
    # And no document of the failed run is wrongly done: its records and keyword rows are all there.
    assert_settled_documents_are_whole(state)
    statuses = [s for s, _, _ in state["manifest"].values()]
    assert statuses.count("pending") > 0 and statuses.count("done") < 10 + LARGE_FILES

    # The rerun ends with everything indexed and consistent.
    rc, out, err = run_child("ingest", data, large)
    assert rc == 0 and not out["summary"]["failed"], (out, err[-3000:])
    probe = small_markers[:2] + large_markers[::97]
    rc, state, err = run_child("inspect", data, *probe)
    assert rc == 0, (state, err[-3000:])
    assert state["problems"] == [], state["problems"]
    assert len(state["manifest"]) == 10 + LARGE_FILES
    assert {s for s, _, _ in state["manifest"].values()} == {"done"}
    assert_settled_documents_are_whole(state)
    assert state["have"] == [state["want"][0], state["want"][1], state["want"][1]]
    for token in probe:
        prefix = "firstcorpus" if token.startswith("firstcorpus") else "bigcorpus"
        i = (small_markers if prefix == "firstcorpus" else large_markers).index(token)
        assert state["top"][token] == [f"{prefix}{i:04d}.txt"] * 3, token


# -- 1c: a damaged keyword index --------------------------------------------------------------------
def _damage(folder: Path, how: str) -> None:
    if how == "meta.json":
        (folder / "meta.json").write_bytes(b"")
        return
    segments = [p for p in folder.iterdir() if p.suffix in {".idx", ".term", ".pos", ".store", ".fast", ".fieldnorm"}]
    assert segments, sorted(p.name for p in folder.iterdir())
    for path in segments:  # a half-written copy, as a disk that filled or a crash mid-copy leaves
        with path.open("r+b") as fh:
            fh.truncate(path.stat().st_size // 2)


def _ingested_then_damaged(tmp_path: Path, how: str) -> tuple[Path, Path, list[str]]:
    corpus = tmp_path / "corpus"
    markers = write_corpus(corpus, "kwdoc", 20, 30, seed=3)
    data = tmp_path / "data"
    rc, out, err = run_child("ingest", data, corpus)
    assert rc == 0 and out["summary"]["indexed"] == 20, err[-3000:]
    _damage(data / "keyword" / COLLECTION, how)
    return data, corpus, markers


def _cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmrag", *args, "--collection", COLLECTION, "--data-dir", str(data)],
                          env=child_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["meta.json", "segments"])
def test_damaged_keyword_index_is_a_store_error_naming_its_folder(tmp_path: Path, how: str) -> None:
    data, _, markers = _ingested_then_damaged(tmp_path, how)
    folder = str(data / "keyword" / COLLECTION)
    # (The CLI embeds with real models, which a collection of the hashing fakes refuses, so BM25 only.)
    for args in (["status"], ["search", markers[0], "--retriever", "bm25", "--profile", "offline"]):
        done = _cli(data, *args)
        assert done.returncode == 1, (args, done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "StoreError" in done.stderr and f"The keyword index in {folder}" in done.stderr, done.stderr[-3000:]
    # The library raises it too (the API turns it into a 503 naming the folder).
    rc, out, err = run_child("inspect", data, markers[0])
    assert rc == 1 and out["error"] == "StoreError" and folder in out["message"], (out, err[-3000:])


@pytest.mark.parametrize("how", ["meta.json", "segments"])
def test_rerunning_ingest_repairs_a_damaged_keyword_index(tmp_path: Path, how: str) -> None:
    data, corpus, markers = _ingested_then_damaged(tmp_path, how)
    rc, out, err = run_child("ingest", data, corpus)
    assert rc == 0, (out, err[-3000:])
    # Rebuilt from the text collection, embedding nothing; the damaged folder is kept for inspection.
    assert out["summary"]["repaired"] == 20 and out["summary"]["embeddings"] == {"clip": 0, "text": 0}
    assert [p.name.startswith(f"{COLLECTION}.damaged-") for p in (data / "keyword").iterdir()].count(True) == 1
    rc, state, err = run_child("inspect", data, *markers[:3])
    assert rc == 0 and state["problems"] == [], (state, err[-3000:])
    assert [state["top"][m] for m in markers[:3]] == [[f"kwdoc{i:04d}.txt"] * 3 for i in range(3)]


def test_ingest_rebuilds_a_removed_keyword_index_from_the_text_store(tmp_path: Path) -> None:
    # A keyword index deleted by hand (what a user may do with a damaged one) is rebuilt the same way.
    data, corpus, markers = _ingested_then_damaged(tmp_path, "meta.json")
    shutil.rmtree(data / "keyword" / COLLECTION)
    rc, out, err = run_child("ingest", data, corpus)
    assert rc == 0, (out, err[-3000:])
    assert out["summary"]["repaired"] == 20 and out["summary"]["embeddings"] == {"clip": 0, "text": 0}
    rc, state, err = run_child("inspect", data, *markers[:3])
    assert rc == 0 and state["problems"] == [], (state, err[-3000:])
    assert_settled_documents_are_whole(state)
    assert [state["top"][m] for m in markers[:3]] == [[f"kwdoc{i:04d}.txt"] * 3 for i in range(3)]
