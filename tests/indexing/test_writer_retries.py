"""A Chroma server that goes away for a few seconds mid-ingest: the driver retries its writes with
backoff, finishes the run, counts the retries, and ends as an uninterrupted run (issue 10)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.helpers.faults import ChromaServer
from tests.indexing.test_fault_injection import (
    _done_count,
    _ingest_cli,
    _ingest_to_end,
    _server_snapshot,
    write_corpus,
)

pytestmark = [pytest.mark.slow, pytest.mark.long]  # 47 s on CI: a Chroma server stopped and restarted


def test_a_server_restarted_within_the_retry_window_costs_retries_not_the_run(
        tmp_path: Path, chroma_servers: list[ChromaServer]) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus / "texts", "retried", 900, 25, seed=7)
    reference = ChromaServer(tmp_path / "reference-server")
    chroma_servers.append(reference)
    ref_url = reference.start()
    assert _ingest_to_end(corpus, tmp_path / "reference", ref_url)["retries"] == 0
    expected = _server_snapshot(tmp_path / "reference", ref_url)
    reference.stop()

    server = ChromaServer(tmp_path / "server")
    chroma_servers.append(server)
    url = server.start()
    data = tmp_path / "data"
    proc, out, err = _ingest_cli(corpus, data, url)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and _done_count(data) == 0:
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest ended before any document was done"
    server.kill()
    down_at = _done_count(data)
    time.sleep(2.0)  # inside the ~30 s of retries
    server.start(port=urlparse(url).port)
    assert proc.wait(timeout=600) == 0, err.read_text()[-3000:]
    import json

    summary = json.loads(out.read_text())
    print(f"\nserver down for 2 s at {down_at} documents done: {summary['retries']} retries, "
          f"indexed {summary['indexed']}")
    assert down_at < summary["indexed"], "the server went down after the run's last write"
    assert summary["retries"] >= 1 and summary["failed"] == [], summary
    got = _server_snapshot(data, url)
    assert got["manifest"] == expected["manifest"] and got["keyword"] == expected["keyword"]
    assert got["collections"] == expected["collections"]
    for name in expected["collections"]:
        assert got[name]["ids"] == expected[name]["ids"] and got[name]["meta"] == expected[name]["meta"], name
        assert got[name]["docs"] == expected[name]["docs"], name
        if not expected[name]["ids"]:
            continue  # the image collection of this text corpus is empty
        cos = (got[name]["vecs"] * expected[name]["vecs"]).sum(-1)
        assert cos.min() > 0.999, f"{name}: vectors differ (min cosine {cos.min():.5f})"
