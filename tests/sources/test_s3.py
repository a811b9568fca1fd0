"""`mmrag ingest s3://bucket/prefix` against a real S3-compatible server on loopback (moto's server mode).

Real CLI, real Chroma, the offline models. Between the client and moto sits a small TCP proxy
(:class:`Endpoint`): it counts the objects read (an unchanged object must not be read at all) and
can die on cue, mid-ingest, and come back on the same port. Issue 27, acceptance line 4.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLE_CORPUS

pytestmark = pytest.mark.slow
moto_server = pytest.importorskip("moto.server", reason="the object storage tests need moto[server] (the dev extra)")
pytest.importorskip("s3fs", reason="s3:// sources need s3fs (pip install 'mmrag[s3]')")

KEYS = "testing"
WORDS = ["amber", "birch", "cobalt", "dune", "ember", "fjord"]
#: A request line that reads an object (``GET /bucket/key``), not a listing (``GET /bucket?list-type=2``).
OBJECT_GET = re.compile(rb"GET /[^/?\s]+/[^?\s]+ HTTP/1")


class Endpoint:
    """A TCP proxy in front of moto: counts object reads; :meth:`kill` drops every connection and stops listening."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.reads = 0
        self.die_after: int | None = None  # kill on this object read (it is not forwarded)
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.port = 0
        self.revive()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def revive(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def kill(self) -> None:
        with self._lock:
            socks, self._socks = [self.listener, *self._socks], []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and (n := len(OBJECT_GET.findall(data))):
                    with self._lock:
                        self.reads += n
                        die = self.die_after is not None and self.reads >= self.die_after
                    if die:
                        self.kill()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()
    server.stop()


@pytest.fixture
def s3(moto: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh bucket behind a fresh :class:`Endpoint`; credentials in the environment as a user would set them."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": KEYS, "AWS_SECRET_ACCESS_KEY": KEYS, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    endpoint = Endpoint(moto)
    client = boto3.client("s3", endpoint_url=f"http://{moto[0]}:{moto[1]}", aws_access_key_id=KEYS,
                          aws_secret_access_key=KEYS, region_name="us-east-1")
    bucket = f"kb-{uuid.uuid4().hex[:12]}"  # moto's state lives as long as this process
    client.create_bucket(Bucket=bucket)
    client.endpoint, client.bucket = endpoint, bucket  # type: ignore[attr-defined]
    yield client
    endpoint.kill()


def _put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=s3.bucket, Key=key, Body=body)


def _corpus(s3: Any) -> dict[str, bytes]:
    files = {
        "docs/alpha.txt": b"The alpha report says the turbine in hall seven hums at forty hertz.\n",
        "docs/notes/beta.md": b"# Beta\n\nBeta notes: the quarry closes on Sundays and opens at dawn.\n",
        "docs/gamma.html": b"<html><body><h1>Gamma</h1><p>Gamma pages list the ferry timetable for winter.</p></body></html>",
        "docs/images/red-circle.png": (SAMPLE_CORPUS / "images" / "red-circle.png").read_bytes(),
        "outside/delta.txt": b"Delta is outside the prefix and must never be ingested.\n",
    }
    for key, body in files.items():
        _put(s3, key, body)
    return files


def _cli(*args: str, code: int = 0) -> dict[str, Any]:
    result = CliRunner().invoke(main(), [*args, "--profile", "offline", "--json"])
    assert result.exit_code == code, (result.exit_code, result.output)
    return json.loads(result.stdout) if code == 0 else {"output": result.output, "stdout": result.stdout}


def main() -> Any:
    from mmrag.cli import main as cli

    return cli


def _hits(query: str) -> list[str]:
    result = CliRunner().invoke(main(), ["search", query, "--retriever", "bm25", "--k", "3", "--profile", "offline",
                                         "--json"])
    assert result.exit_code == 0, result.output
    return [h["doc_id"] for h in json.loads(result.stdout)]


def test_ingest_from_a_bucket_is_incremental_by_etag_and_prunes(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _corpus(s3)
    url, endpoint = f"s3://{s3.bucket}/docs", s3.endpoint
    monkeypatch.setenv("MMRAG_SOURCE__ENDPOINT_URL", endpoint.url)

    first = _cli("ingest", url)
    ids = {"alpha.txt", "notes/beta.md", "gamma.html", "images/red-circle.png"}
    assert (first["indexed"], first["failed"], first["files_seen"]) == (4, [], 4), first
    assert {f["doc_id"] for f in first["files"]} == ids  # keys relative to the prefix; outside/ not listed
    assert {f["path"] for f in first["files"]} == {f"{url}/{d}" for d in ids}
    assert first["embeddings"]["clip"] > 0 and endpoint.reads == 4
    assert _hits("turbine hertz")[0] == "alpha.txt"

    endpoint.reads = 0
    again = _cli("ingest", url)
    assert (again["indexed"], again["unchanged"], again["embeddings"]) == (0, 4, {"clip": 0, "text": 0}), again
    assert endpoint.reads == 0  # same size and ETag: not even downloaded

    _put(s3, "docs/notes/beta.md", b"# Beta\n\nBeta notes, revised: the quarry now closes on Mondays.\n")
    changed = _cli("ingest", url)
    assert (changed["indexed"], changed["unchanged"], endpoint.reads) == (1, 3, 1), changed
    assert changed["embeddings"]["text"] > 0
    assert _hits("quarry Mondays revised")[0] == "notes/beta.md"

    s3.delete_object(Bucket=s3.bucket, Key="docs/alpha.txt")
    pruned = _cli("ingest", url, "--prune")
    assert (pruned["pruned"], pruned["indexed"], pruned["files_seen"], pruned["embeddings"]["text"]) == (1, 0, 3, 0)
    assert "alpha.txt" not in _hits("turbine hertz")
    status = _cli("status")
    assert status["documents"] == {"done": 3} and status["problems"] == [], status


def test_too_big_a_missing_bucket_bad_credentials_and_a_dead_endpoint_are_named(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = s3.endpoint
    missing = _cli("ingest", "s3://no-such-bucket-here/docs", "--storage-option", f"endpoint_url={endpoint.url}", code=2)
    assert "s3://no-such-bucket-here/docs" in missing["output"] and "no such bucket" in missing["output"]
    assert "Traceback" not in missing["output"]

    _put(s3, "big/huge.txt", b"x" * (1024 * 1024 + 1))
    monkeypatch.setenv("MMRAG_SOURCE__MAX_OBJECT_MB", "1")
    over = json.loads(_cli("ingest", f"s3://{s3.bucket}/big", "--storage-option", f"endpoint_url={endpoint.url}",
                           code=3)["stdout"])
    assert [(f["path"], f["outcome"]) for f in over["files"]] == [(f"s3://{s3.bucket}/big/huge.txt", "failed")]
    assert "over the 1 MB limit" in over["files"][0]["reason"] and endpoint.reads == 0  # refused unread

    _put(s3, "docs/a.txt", b"something to read")
    _auth(0)  # moto checks credentials from the next request on: "testing" is no IAM user's key
    try:
        refused = _cli("ingest", f"s3://{s3.bucket}/docs", "--storage-option", f"endpoint_url={endpoint.url}", code=1)
    finally:
        _auth(float("inf"))
    assert f"s3://{s3.bucket}/docs" in refused["output"] and "refused access" in refused["output"], refused
    assert "AWS_ACCESS_KEY_ID" in refused["output"]

    endpoint.kill()
    dead = _cli("ingest", f"s3://{s3.bucket}/docs", "--storage-option", f"endpoint_url={endpoint.url}", code=1)
    assert "did not answer" in dead["output"] and endpoint.url in dead["output"], dead
    assert "MMRAG_SOURCE__ENDPOINT_URL" in dead["output"]


def _auth(count: float) -> None:
    """What moto's /moto-api/reset-auth does: check credentials after ``count`` more requests (the server is in-process)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = count
    ActionAuthenticatorMixin.request_count = 0


@pytest.mark.long  # about a minute: three ingests, a death, a rerun
def test_the_endpoint_dying_mid_ingest_loses_nothing_and_the_rerun_completes(s3: Any, monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    endpoint, url = s3.endpoint, f"s3://{s3.bucket}/corpus"
    monkeypatch.setenv("MMRAG_SOURCE__ENDPOINT_URL", endpoint.url)
    for n in range(6):
        _put(s3, f"corpus/first/{n}.txt", f"First batch document {n} talks about the {WORDS[n]} lighthouse.".encode())
    assert _cli("ingest", url)["indexed"] == 6

    for n in range(12):
        _put(s3, f"corpus/second/{n}.txt", f"Second batch document {n} talks about windmill number {n}.".encode())
    _put(s3, "corpus/first/0.txt", b"First batch document 0, rewritten, now about a harbour crane.")
    endpoint.reads, endpoint.die_after = 0, 5  # the 5th object read gets no answer, nor does anything after it
    died = _cli("ingest", url, code=1)["output"]
    assert "did not answer" in died and url in died and "rerun" in died, died
    assert "Traceback" not in died

    # Nothing stored was lost: the first run's documents are all there, and the stores agree with the manifest.
    from mmrag.manifest import Manifest

    manifest = Manifest(Path(os.environ["MMRAG_DATA_DIR"]) / "manifest.sqlite3")
    try:
        states = {s.doc_id: s for s in manifest.all("default")}
    finally:
        manifest.close()
    assert all(states[f"first/{n}.txt"].status == "done" for n in range(1, 6)), states
    assert states["first/0.txt"].status in {"done", "pending"}  # pending only if its rewrite was mid-write
    assert _cli("status")["problems"] == []
    assert _hits(f"{WORDS[3]} lighthouse")[0] == "first/3.txt"

    endpoint.revive()
    endpoint.die_after = None
    rerun = _cli("ingest", url)
    assert rerun["failed"] == [] and rerun["files_seen"] == 18, rerun
    status = _cli("status")
    assert status["documents"] == {"done": 18} and status["problems"] == [], status
    assert _hits("harbour crane rewritten")[0] == "first/0.txt"


def _ray_ingest(url: str, *extra: str) -> dict[str, Any]:
    """`mmrag ingest URL --engine ray` in its own process (a local 2-CPU Ray), as the Ray engine's tests run it."""
    env = {**os.environ, "MMRAG_PROFILE": "offline", "OMP_NUM_THREADS": "1", "MMRAG_TORCH_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mmrag", "ingest", url, "--engine", "ray", "--json", *extra],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["engine"] == "ray", summary
    return summary  # type: ignore[no-any-return]


@pytest.mark.long  # a local Ray starts four times: minutes on 2 cores
@pytest.mark.ray
def test_the_ray_engine_reads_the_objects_in_its_workers_incrementally(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="the Ray engine's tests need mmrag[ray]")
    _corpus(s3)
    url, endpoint = f"s3://{s3.bucket}/docs", s3.endpoint
    monkeypatch.setenv("MMRAG_SOURCE__ENDPOINT_URL", endpoint.url)

    first = _ray_ingest(url)
    assert (first["indexed"], first["failed"], endpoint.reads) == (4, [], 4), first
    assert {f["doc_id"] for f in first["files"]} == {"alpha.txt", "notes/beta.md", "gamma.html", "images/red-circle.png"}
    assert _hits("turbine hertz")[0] == "alpha.txt"

    endpoint.reads = 0
    again = _ray_ingest(url)
    assert (again["indexed"], again["unchanged"], again["embeddings"], endpoint.reads) == (0, 4, {"clip": 0, "text": 0}, 0)

    _put(s3, "docs/notes/beta.md", b"# Beta\n\nBeta notes, revised: the quarry now closes on Mondays.\n")
    changed = _ray_ingest(url)
    assert (changed["indexed"], changed["unchanged"], endpoint.reads) == (1, 3, 1), changed
    assert _hits("quarry Mondays revised")[0] == "notes/beta.md"

    s3.delete_object(Bucket=s3.bucket, Key="docs/alpha.txt")
    pruned = _ray_ingest(url, "--prune")
    assert (pruned["pruned"], pruned["indexed"], pruned["embeddings"]["text"]) == (1, 0, 0), pruned
    assert _cli("status")["documents"] == {"done": 3}


@pytest.mark.long  # about 35 s: an ingest, a repair and a reindex, each loading the models
def test_doctor_repair_and_reindex_read_the_objects_again(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrag.config import Settings
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models

    _corpus(s3)
    url, endpoint = f"s3://{s3.bucket}/docs", s3.endpoint
    monkeypatch.setenv("MMRAG_SOURCE__ENDPOINT_URL", endpoint.url)
    assert _cli("ingest", url)["indexed"] == 4
    kb = KnowledgeBase(Path(os.environ["MMRAG_DATA_DIR"]), "default", resolve_models(Settings(profile="offline")))
    kb.client.get_collection(kb.text_name, embedding_function=None).delete(ids=["gamma.html#t0"])

    endpoint.reads = 0
    repaired = _cli("doctor", "--repair")
    assert repaired["repair"]["reingested"] == ["gamma.html"] and repaired["repair"]["after"]["healthy"], repaired
    assert repaired["repair"]["paths"] == [f"{url}/gamma.html"] and endpoint.reads == 1  # re-read from the bucket

    endpoint.reads = 0
    rebuilt = _cli("reindex", "default")
    assert (rebuilt["indexed"], rebuilt["missing_sources"], rebuilt["failed"]) == (4, [], []), rebuilt
    assert endpoint.reads == 4
