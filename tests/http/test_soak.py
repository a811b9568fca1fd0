"""Issue 8, soak: `mmrag serve` on a Chroma server, searched by 10 clients while a writer uploads and deletes.

Loopback only and bounded: every thread runs a fixed number of loops at most and stops at a 60 s
wall limit. The figures are printed (``pytest -s``) for the issue's closing note.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.conftest import free_port, wait_http
from tests.helpers.faults import ChromaServer, child_env, marker

pytestmark = [pytest.mark.slow, pytest.mark.long]

COLLECTION = "soak"
SEARCHERS = 10
SOAK_SECONDS = 60.0
SEARCH_LOOPS = 2000  # per search thread; the wall limit ends the soak first on this machine
WRITER_LOOPS = 400
DELETE_EVERY = 3  # the writer deletes an earlier upload after every third one
SEED_DOCS = 20
#: Two workers: uploads, deletes and searches then also cross processes (writer lock, keyword
#: index reloads), which is what a Chroma server is for. One thread each: 2 cores, shared.
WORKERS = 2
_FILLER = "The soak corpus holds short notes about lanterns, harbours, rivers and copper signals."
QUERIES = ["lantern harbour", "copper signals", "rivers", "short notes about lanterns", "soak corpus"]


def _doc(i: int) -> tuple[str, bytes]:
    return f"soak{i:04d}.txt", f"Note {marker('soakdoc', i)}. {_FILLER} Entry {i}.\n".encode()


def _key(data_dir: Path, scope: str) -> str:
    result = CliRunner().invoke(main, ["keys", "create", f"soak-{scope}", "--scope", scope, "--data-dir",
                                       str(data_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["token"])


@dataclass
class Tally:
    """What the threads did; appended to under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"bm25": [], "hybrid": [], "upload": [],
                                                                       "delete": []})
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, started: float, response: httpx.Response | None, expected: int,
               problem: str | None = None) -> None:
        with self.lock:
            self.latencies[kind].append(time.perf_counter() - started)
            if response is None or response.status_code != expected or problem:
                status = "no response" if response is None else response.status_code
                self.errors.append(f"{kind}: {status} {problem or ''} {'' if response is None else response.text[:300]}")

    def fail(self, problem: str) -> None:
        """An error found in a 2xx response."""
        with self.lock:
            self.errors.append(problem)


def _call(tally: Tally, kind: str, expected: int, send: Any) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = send()
    except httpx.HTTPError as exc:
        tally.record(kind, started, None, expected, f"{type(exc).__name__}: {exc}")
        return None
    tally.record(kind, started, response, expected)
    return response


def test_soak_search_while_uploading_and_deleting(tmp_path: Path) -> None:
    chroma = ChromaServer(tmp_path / "chroma")
    store_url = chroma.start()
    data = tmp_path / "data"
    reader, writer = _key(data, "read"), _key(data, "write")
    port = free_port()
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir", str(data), "--port", str(port),
         "--store-url", store_url, "--collection", COLLECTION, "--workers", str(WORKERS)],
        env=child_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", 300, serve)
        _soak(base, reader, writer, tmp_path, data, store_url, serve)
    finally:
        if serve.poll() is None:
            serve.terminate()
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
        chroma.stop()


def _soak(base: str, reader: str, writer: str, tmp_path: Path, data: Path, store_url: str,
          serve: subprocess.Popen[bytes]) -> None:
    read_h, write_h = {"Authorization": f"Bearer {reader}"}, {"Authorization": f"Bearer {writer}"}
    tally = Tally()
    alive: dict[int, str] = {}  # doc number -> doc id, uploaded and not deleted
    deleted: dict[int, str] = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        # Seed the collection, so searches have something to find from the first request on.
        r = client.post("/v1/documents", headers=write_h, data={"collection": COLLECTION},
                        files=[("files", _doc(i)) for i in range(SEED_DOCS)])
        assert r.status_code == 201 and r.json()["indexed"] == SEED_DOCS, r.text
        alive.update({i: _doc(i)[0] for i in range(SEED_DOCS)})

    stop_at = time.monotonic() + SOAK_SECONDS
    counts = {"uploads": 0, "deletes": 0}

    def search(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for loop in range(SEARCH_LOOPS):
                if time.monotonic() >= stop_at:
                    return
                retriever = "bm25" if (loop + n) % 2 else "hybrid"
                body = {"collection": COLLECTION, "query": QUERIES[(loop * 7 + n) % len(QUERIES)],
                        "retriever": retriever, "k": 5}
                r = _call(tally, retriever, 200, lambda: client.post("/v1/search", headers=read_h, json=body))
                if r is not None and r.status_code == 200 and not r.json()["hits"]:
                    tally.fail(f"{retriever} {body['query']!r}: no hits, though every document matches")

    def write() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for loop in range(WRITER_LOOPS):
                if time.monotonic() >= stop_at:
                    return
                i = SEED_DOCS + loop
                r = _call(tally, "upload", 201, lambda: client.post(
                    "/v1/documents", headers=write_h, data={"collection": COLLECTION}, files=[("files", _doc(i))]))
                if r is not None and r.status_code == 201:
                    if r.json()["indexed"] != 1:
                        tally.fail(f"upload {_doc(i)[0]}: not indexed: {r.text[:300]}")
                    alive[i] = _doc(i)[0]
                    counts["uploads"] += 1
                if loop % DELETE_EVERY == DELETE_EVERY - 1:
                    victim = sorted(alive)[loop % len(alive)]
                    doc_id = alive.pop(victim)
                    r = _call(tally, "delete", 200, lambda: client.delete(
                        f"/v1/documents/{doc_id}", headers=write_h, params={"collection": COLLECTION}))
                    if r is not None and r.status_code == 200:
                        deleted[victim] = doc_id
                        counts["deletes"] += 1
                    else:
                        alive[victim] = doc_id  # not deleted: still expected everywhere

    threads = [threading.Thread(target=search, args=(n,), name=f"search-{n}") for n in range(SEARCHERS)]
    threads.append(threading.Thread(target=write, name="writer"))
    elapsed = run_clients(threads, SOAK_SECONDS + 300, serve, tmp_path)

    searches = len(tally.latencies["bm25"]) + len(tally.latencies["hybrid"])
    lines = [f"soak: {elapsed:.1f} s, {SEARCHERS} search threads + 1 writer, {WORKERS} serve workers on a Chroma server",
             f"  requests {searches + counts['uploads'] + counts['deletes']} (searches {searches}: "
             f"bm25 {len(tally.latencies['bm25'])}, hybrid {len(tally.latencies['hybrid'])}; "
             f"uploads {counts['uploads']}; deletes {counts['deletes']}), errors {len(tally.errors)}"]
    for kind, values in tally.latencies.items():
        if values:
            ms = np.asarray(values) * 1000
            lines.append(f"  {kind:<7} p50 {np.percentile(ms, 50):7.1f} ms  p95 {np.percentile(ms, 95):7.1f} ms  "
                         f"max {ms.max():7.1f} ms  (n={len(ms)})")
    print("\n" + "\n".join(lines))
    assert tally.errors == [], tally.errors[:10]
    assert searches >= SEARCHERS and counts["uploads"] > 0 and counts["deletes"] > 0

    # No lost documents: every upload not deleted is found by its own token, no deleted one is.
    with httpx.Client(base_url=base, timeout=120) as client:
        def top(i: int) -> list[str]:
            r = client.post("/v1/search", headers=read_h, json={"collection": COLLECTION, "retriever": "bm25", "k": 3,
                                                                "query": marker("soakdoc", i)})
            assert r.status_code == 200, r.text
            return [h["doc_id"] for h in r.json()["hits"]]

        for i, doc_id in sorted(alive.items()):
            assert top(i)[:1] == [doc_id], doc_id
        for i, doc_id in sorted(deleted.items()):
            assert doc_id not in top(i), f"deleted {doc_id} is still found"
        r = client.get("/v1/collections", headers=read_h)
        assert r.status_code == 200, r.text
        sizes = next(c for c in r.json()["collections"] if c["name"] == COLLECTION)

    serve.terminate()
    serve.wait(timeout=60)
    _check_counts(data, store_url, alive, deleted, sizes)


def _check_counts(data: Path, store_url: str, alive: dict[int, str], deleted: dict[int, str],
                  sizes: dict[str, Any]) -> None:
    """After `serve` stopped: the manifest, every index and the API's sizes agree."""
    from mmrag.config import Settings
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models

    kb = KnowledgeBase(data, COLLECTION, resolve_models(Settings(profile="offline")), store_url=store_url)
    states = {s.doc_id: s.status for s in kb.manifest.all(COLLECTION)}
    assert states == {doc_id: "done" for doc_id in alive.values()}, {
        "missing": sorted(set(alive.values()) - set(states)), "not deleted": sorted(set(states) & set(deleted.values())),
        "not done": sorted(d for d, s in states.items() if s != "done")}
    health = kb.health()
    print(f"  end: {len(alive)} documents; records clip {health.have[0]}, text {health.have[1]}, keyword "
          f"{health.have[2]}; manifest expects clip {health.want[0]}, text {health.want[1]}")
    assert health.problems == [], health.problems
    assert health.have == (health.want[0], health.want[1], health.want[1])
    assert sizes == {"name": COLLECTION, "documents": len(alive), "clip_records": health.want[0],
                     "text_records": health.want[1]}


def run_clients(threads: list[threading.Thread], wall: float, serve: subprocess.Popen, tmp_path: Path) -> float:
    """Start the soak's client threads, wait up to ``wall`` seconds for each; the server must still run.

    Returns:
        The seconds the clients ran.
    """
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=wall)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a client thread is stuck past the wall limit"
    assert serve.poll() is None, log_tail(tmp_path)
    return elapsed


def log_tail(tmp_path: Path) -> str:
    """The end of the serve log, for a failure message."""
    return (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
