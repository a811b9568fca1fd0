"""The lifecycle over HTTP: versions (read), promote and rollback (admin), the alias read per request."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mmrag.chunking import ChunkSpec
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.probes import Probe, ProbeStore
from mmrag.lifecycle.reindex import reindex
from mmrag.lifecycle.versions import Versions
from tests.helpers.api import Api, make_api

DOCS = [(f"note{i}.txt", f"Note {i}. The {w} opens at {8 + i} o'clock on weekdays.".encode())
        for i, w in enumerate(["museum", "library", "harbor", "garden"])]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path / "data", None)


def _reindex(api: Api, kb: str, size: int) -> int:
    services = api.services

    def open_kb(name: str, chunk: ChunkSpec) -> KnowledgeBase:
        return KnowledgeBase(services.data_dir, services.physical(name), services.models, chunk=chunk,
                             clip=HashingEmbedder(16), text=HashingEmbedder(8))

    return reindex(kb, open_kb=open_kb, chunk=ChunkSpec(size, 4), models=services.models).version.number


def _search_version(api: Api, collection: str) -> str:
    r = api.client.post("/v1/search", headers=api.auth("reader"), json={"query": "museum", "collection": collection})
    assert r.status_code == 200, r.text
    return str(r.json()["version"])


def test_promote_and_rollback_switch_what_the_server_answers_from(api: Api) -> None:
    kb = api.col("kb")
    assert api.upload("admin", kb, *DOCS).status_code == 201
    assert _search_version(api, kb) == f"{kb}@1"
    assert _reindex(api, kb, 16) == 2
    assert _search_version(api, kb) == f"{kb}@1"  # built, not live
    assert _search_version(api, f"{kb}@2") == f"{kb}@2"  # a version can be read by name

    listed = api.client.get(f"/v1/collections/{kb}/versions", headers=api.auth("reader"))
    assert listed.status_code == 200 and listed.json()["live"] == f"{kb}@1"
    assert [v["label"] for v in listed.json()["versions"]] == [f"{kb}@1", f"{kb}@2"]

    refused = api.client.post(f"/v1/collections/{kb}/promote", headers=api.auth("reader"), json={"version": 2})
    assert refused.status_code == 403
    promoted = api.client.post(f"/v1/collections/{kb}/promote", headers=api.auth("admin"), json={"version": 2})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["live"] == f"{kb}@2" and promoted.json()["previous"] == f"{kb}@1"
    assert _search_version(api, kb) == f"{kb}@2"
    # Writes go to the live version too.
    assert api.upload("admin", kb, ("late.txt", b"A late note about the museum shop.")).status_code == 201
    assert Versions(api.services._bare(kb).manifest).get(kb, 2).physical == api.services.physical(kb)
    assert api.services.kb(kb).manifest.get(api.services.physical(kb), "late.txt") is not None

    back = api.client.post(f"/v1/collections/{kb}/rollback", headers=api.auth("admin"))
    assert back.status_code == 200 and back.json()["live"] == f"{kb}@1"
    assert _search_version(api, kb) == f"{kb}@1"
    # The upload made while kb@2 was live is carried back: a rollback undoes a build, not the uploads.
    assert api.services.kb(kb).manifest.get(api.services.physical(kb), "late.txt") is not None
    r = api.client.post("/v1/search", headers=api.auth("reader"), json={"query": "museum shop", "collection": kb,
                                                                       "retriever": "bm25"})
    assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "late.txt", r.text
    again = api.client.post(f"/v1/collections/{kb}/rollback", headers=api.auth("admin"))
    assert again.status_code == 400 and "no earlier live version" in again.text

    # The collection list shows the knowledge base once, and dropping it drops every version.
    names = [c["name"] for c in api.client.get("/v1/collections", headers=api.auth("reader")).json()["collections"]]
    assert names.count(kb) == 1 and not any("--v" in n for n in names)
    assert api.client.delete(f"/v1/collections/{kb}", headers=api.auth("admin")).status_code == 200
    assert api.client.get(f"/v1/collections/{kb}/versions", headers=api.auth("reader")).status_code == 404
    assert not api.services._bare(kb).manifest.has_collection(f"{kb}--v2")


def test_promote_refused_by_the_canary_is_a_409_naming_the_probe(api: Api) -> None:
    kb = api.col("kb")
    assert api.upload("admin", kb, *DOCS).status_code == 201
    _reindex(api, kb, 16)
    services = api.services
    degraded = KnowledgeBase(services.data_dir, f"{kb}--v2", services.models, clip=HashingEmbedder(16),
                             text=HashingEmbedder(8))
    from mmrag.indexing import Indexer

    Indexer(degraded).delete(["note0.txt"])
    ProbeStore(services._bare(kb).manifest).add(kb, Probe("museum-hours", "museum opens", ("note0.txt",), k=3))
    r = api.client.post(f"/v1/collections/{kb}/promote", headers=api.auth("admin"), json={"version": 2})
    assert r.status_code == 409 and r.json()["error"]["code"] == "canary_refused", r.text
    assert "museum-hours" in r.text
    assert _search_version(api, kb) == f"{kb}@1"
    forced = api.client.post(f"/v1/collections/{kb}/promote", headers=api.auth("admin"),
                             json={"version": 2, "force": True})
    assert forced.status_code == 200 and forced.json()["forced"] is True
    events = api.client.get(f"/v1/collections/{kb}/versions", headers=api.auth("reader")).json()["events"]
    assert [e["kind"] for e in events[:2]] == ["promote-forced", "promote-refused"]


def test_serve_time_probes_are_not_counted_as_users_queries(api: Api) -> None:
    kb = api.col("kb")
    assert api.upload("admin", kb, *DOCS).status_code == 201
    _search_version(api, kb)  # a user's query: recorded for query drift
    ProbeStore(api.services._bare(kb).manifest).add(kb, Probe("museum", "museum opens", ("note0.txt",), k=3))
    queries = api.services.metrics.queries
    before = len(queries.recent(kb, "text"))
    from mmrag.http.probing import ProbeMonitor

    runs = ProbeMonitor(api.services, interval_s=0).run_once()
    assert [r.report.passed for r in runs if r.collection == kb] == [True]
    assert before == 1 and len(queries.recent(kb, "text")) == before
