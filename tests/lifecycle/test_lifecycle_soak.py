"""Issue 23, acceptance 3: `mmrag serve` searched and written to while its knowledge base is reindexed,
promoted, rolled back and pruned, for 60 s.

A real `mmrag serve` (the offline profile's models, on a Chroma server so that CLI processes may
share the store) answers 10 search clients and one uploader (uploads, and a delete after every
third) while a loop runs `mmrag reindex` (CLI), `POST .../promote`, `POST .../rollback`,
`POST .../promote` again (HTTP) and `mmrag versions prune --keep 1` (CLI). Every request must
succeed; at the end every upload not deleted is found by its own token in the live version and no
deleted one is, and the alias names a ready version whose stores hold what its manifest counts.
The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, wait_http
from tests.helpers.faults import REPO, ChromaServer, child_env, marker
from tests.http.test_soak import Tally, _call, _key, run_clients

pytestmark = [pytest.mark.slow, pytest.mark.long]

COLLECTION = "lcsoak"
SEARCHERS = 10
SOAK_SECONDS = 60.0
SEED_DOCS = 20
DELETE_EVERY = 3
QUERIES = ["lantern harbour", "copper signals", "rivers", "short notes about lanterns", "soak corpus"]
_FILLER = "The soak corpus holds short notes about lanterns, harbours, rivers and copper signals."


def _doc(i: int) -> tuple[str, bytes]:
    return f"lc{i:04d}.txt", f"Note {marker('lcdoc', i)}. {_FILLER} Entry {i}.\n".encode()


def _env() -> dict[str, str]:
    # This checkout's sources first: the children must run the code under test.
    return child_env(PYTHONPATH=f"{REPO / 'src'}:{REPO}")


def test_soak_search_and_upload_through_reindex_promote_rollback_prune(tmp_path: Path) -> None:
    chroma = ChromaServer(tmp_path / "chroma")
    store_url = chroma.start()
    data = tmp_path / "data"
    reader, writer, admin = _key(data, "read"), _key(data, "write"), _key(data, "admin")
    port = free_port()
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir", str(data), "--port", str(port),
         "--store-url", store_url, "--collection", COLLECTION],
        env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", 300, serve)
        _soak(base, {"read": reader, "write": writer, "admin": admin}, tmp_path, data, store_url, serve)
    finally:
        if serve.poll() is None:
            serve.terminate()
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
        chroma.stop()


def _cli(data: Path, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmrag", *args, "--profile", "offline", "--data-dir", str(data),
                           "--store-url", store_url, "--json"], env=_env(), capture_output=True, text=True,
                          timeout=600)


def _soak(base: str, keys: dict[str, str], tmp_path: Path, data: Path, store_url: str,
          serve: subprocess.Popen[bytes]) -> None:
    h = {scope: {"Authorization": f"Bearer {token}"} for scope, token in keys.items()}
    tally = Tally()
    tally.latencies.update({"reindex": [], "promote": [], "rollback": [], "prune": []})
    alive: dict[int, str] = {}
    deleted: dict[int, str] = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        r = client.post("/v1/documents", headers=h["write"], data={"collection": COLLECTION},
                        files=[("files", _doc(i)) for i in range(SEED_DOCS)])
        assert r.status_code == 201 and r.json()["indexed"] == SEED_DOCS, r.text
        alive.update({i: _doc(i)[0] for i in range(SEED_DOCS)})

    stop_at = time.monotonic() + SOAK_SECONDS
    counts = {"uploads": 0, "deletes": 0, "loops": 0}
    lifecycle_log: list[str] = []

    def search(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            loop = 0
            while time.monotonic() < stop_at:
                retriever = "bm25" if (loop + n) % 2 else "hybrid"
                body = {"collection": COLLECTION, "query": QUERIES[(loop * 7 + n) % len(QUERIES)],
                        "retriever": retriever, "k": 5}
                r = _call(tally, retriever, 200, lambda: client.post("/v1/search", headers=h["read"], json=body))
                if r is not None and r.status_code == 200 and not r.json()["hits"]:
                    tally.fail(f"{retriever} {body['query']!r}: no hits, though every document matches")
                loop += 1

    def write() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            loop = 0
            while time.monotonic() < stop_at:
                i = SEED_DOCS + loop
                r = _call(tally, "upload", 201, lambda: client.post(
                    "/v1/documents", headers=h["write"], data={"collection": COLLECTION}, files=[("files", _doc(i))]))
                if r is not None and r.status_code == 201:
                    if r.json()["indexed"] != 1:
                        tally.fail(f"upload {_doc(i)[0]}: not indexed: {r.text[:300]}")
                    alive[i] = _doc(i)[0]
                    counts["uploads"] += 1
                if loop % DELETE_EVERY == DELETE_EVERY - 1:
                    victim = sorted(alive)[loop % len(alive)]
                    doc_id = alive.pop(victim)
                    r = _call(tally, "delete", 200, lambda: client.delete(
                        f"/v1/documents/{doc_id}", headers=h["write"], params={"collection": COLLECTION}))
                    if r is not None and r.status_code == 200:
                        deleted[victim] = doc_id
                        counts["deletes"] += 1
                    else:
                        alive[victim] = doc_id
                loop += 1
                time.sleep(0.2)  # an upload every few hundred ms: the searchers get the cores too

    def timed(kind: str, run: Any) -> Any:
        started = time.perf_counter()
        out = run()
        with tally.lock:
            tally.latencies[kind].append(time.perf_counter() - started)
        return out

    def cli_step(kind: str, *args: str) -> dict[str, Any] | None:
        done = timed(kind, lambda: _cli(data, store_url, *args))
        if done.returncode != 0:
            tally.fail(f"{kind}: exit {done.returncode}: {done.stdout[-500:]} {done.stderr[-1500:]}")
            return None
        return dict(json.loads(done.stdout))

    def http_step(client: httpx.Client, kind: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        r = timed(kind, lambda: client.post(f"/v1/collections/{COLLECTION}/{path}", headers=h["admin"], json=body))
        if r.status_code != 200:
            tally.fail(f"{kind}: {r.status_code} {r.text[:500]}")
            return None
        return dict(r.json())

    def lifecycle() -> None:
        with httpx.Client(base_url=base, timeout=600) as client:
            while time.monotonic() < stop_at:
                built = cli_step("reindex", "reindex", COLLECTION, "--chunk-size", str(48 + 16 * (counts["loops"] % 3)))
                if built is None:
                    return
                number = int(built["version"]["version"])
                steps = [("promote", "promote", {"version": number}), ("rollback", "rollback", None),
                         ("promote", "promote", {"version": number})]
                for kind, path, body in steps:
                    out = http_step(client, kind, path, body)
                    if out is None:
                        return
                    lifecycle_log.append(f"{kind} -> {out['live']}")
                    time.sleep(1.0)  # searches and uploads meet each live version
                pruned = cli_step("prune", "versions", "prune", COLLECTION, "--keep", "1")
                if pruned is None:
                    return
                lifecycle_log.append(f"prune dropped {pruned['dropped']}")
                counts["loops"] += 1

    threads = [threading.Thread(target=search, args=(n,), name=f"search-{n}") for n in range(SEARCHERS)]
    threads += [threading.Thread(target=write, name="writer"), threading.Thread(target=lifecycle, name="lifecycle")]
    elapsed = run_clients(threads, SOAK_SECONDS + 600, serve, tmp_path)

    searches = len(tally.latencies["bm25"]) + len(tally.latencies["hybrid"])
    lines = [f"lifecycle soak: {elapsed:.1f} s, {SEARCHERS} search threads + 1 uploader + 1 lifecycle loop, "
             f"1 serve worker on a Chroma server",
             f"  requests {searches + counts['uploads'] + counts['deletes']} (searches {searches}; uploads "
             f"{counts['uploads']}; deletes {counts['deletes']}); lifecycle loops {counts['loops']} "
             f"(reindex {len(tally.latencies['reindex'])}, promote {len(tally.latencies['promote'])}, rollback "
             f"{len(tally.latencies['rollback'])}, prune {len(tally.latencies['prune'])}); errors {len(tally.errors)}"]
    for kind, values in tally.latencies.items():
        if values:
            ms = np.asarray(values) * 1000
            lines.append(f"  {kind:<8} p50 {np.percentile(ms, 50):8.1f} ms  p95 {np.percentile(ms, 95):8.1f} ms  "
                         f"max {ms.max():8.1f} ms  (n={len(ms)})")
    lines.append("  " + "; ".join(lifecycle_log))
    print("\n" + "\n".join(lines))
    assert tally.errors == [], tally.errors[:10]
    assert searches >= SEARCHERS and counts["uploads"] > 0 and counts["deletes"] > 0
    assert len(tally.latencies["rollback"]) > 0 and len(tally.latencies["prune"]) > 0, lines

    # No lost documents: every upload not deleted is found by its own token in the live version.
    with httpx.Client(base_url=base, timeout=120) as client:
        def top(i: int) -> list[str]:
            r = client.post("/v1/search", headers=h["read"], json={"collection": COLLECTION, "retriever": "bm25",
                                                                   "k": 3, "query": marker("lcdoc", i)})
            assert r.status_code == 200, r.text
            return [hit["doc_id"] for hit in r.json()["hits"]]

        lost = [doc_id for i, doc_id in sorted(alive.items()) if top(i)[:1] != [doc_id]]
        back = [doc_id for i, doc_id in sorted(deleted.items()) if doc_id in top(i)]
        assert (lost, back) == ([], []), {"lost": lost, "deleted but found": back}
        listed = client.get(f"/v1/collections/{COLLECTION}/versions", headers=h["read"])
        assert listed.status_code == 200, listed.text
        live = listed.json()["live"]
    serve.terminate()
    serve.wait(timeout=60)
    _check_live(data, store_url, live, alive)


def _check_live(data: Path, store_url: str, live: str, alive: dict[int, str]) -> None:
    """After `serve` stopped: the alias names a ready version whose manifest and stores agree, with every document."""
    from mmrag.config import Settings
    from mmrag.kb import KnowledgeBase
    from mmrag.lifecycle.versions import Versions, split_label
    from mmrag.manifest import Manifest
    from mmrag.registry import resolve_models

    versions = Versions(Manifest(data / "manifest.sqlite3"))
    number = versions.live_number(COLLECTION)
    assert live == f"{COLLECTION}@{number}", (live, number)
    version = versions.get(*split_label(live))  # type: ignore[arg-type]
    assert version.state == "ready"
    kb = KnowledgeBase(data, version.physical, resolve_models(Settings(profile="offline")), store_url=store_url)
    states = {s.doc_id: s.status for s in kb.manifest.all(version.physical)}
    assert states == {doc_id: "done" for doc_id in alive.values()}, {
        "missing": sorted(set(alive.values()) - set(states)), "extra": sorted(set(states) - set(alive.values()))}
    health = kb.health()
    print(f"  end: {live} live, {len(alive)} documents; records clip {health.have[0]}, text {health.have[1]}, "
          f"keyword {health.have[2]}; manifest expects clip {health.want[0]}, text {health.want[1]}")
    assert health.problems == [], health.problems
    assert health.have == (health.want[0], health.want[1], health.want[1])
