"""Per-document access through the HTTP API: labelled uploads, the relabel route, and writes a key cannot see."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mmrag.http.apikeys import KeyStore
from tests.helpers.api import Api, make_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    for made in make_api(tmp_path / "data", None):
        keys = KeyStore(made.data_dir / "api_keys.json")
        for who, scopes, groups in [("hr_reader", ["read"], ["hr"]), ("all_reader", ["read"], ["*"]),
                                    ("hr_admin", ["admin"], ["hr"])]:
            made.tokens[who], _ = keys.create(who, scopes=scopes, collections=["*"], groups=groups)
        yield made


def _found(api: Api, who: str, col: str) -> set[str]:
    r = api.client.post("/v1/search", headers=api.auth(who),
                        json={"query": "payroll", "collection": col, "retriever": "bm25", "k": 10})
    assert r.status_code == 200, r.text
    return {h["doc_id"] for h in r.json()["hits"]}


def test_labelled_upload_relabel_and_hidden_writes(api: Api) -> None:
    col = api.col("a")
    r = api.client.post("/v1/documents", headers=api.auth("writer"), data={"collection": col, "access": "group:hr"},
                        files=[("files", ("pay.txt", b"payroll for march"))])
    assert r.status_code == 201, r.text
    api.upload("writer", col, ("note.txt", b"payroll memo for everyone"))
    assert _found(api, "reader", col) == {"note.txt"}  # a key without groups: unlabelled only
    assert _found(api, "hr_reader", col) == {"note.txt", "pay.txt"}
    assert _found(api, "all_reader", col) == {"note.txt", "pay.txt"}
    listed = {c["name"]: c["documents"] for c in api.client.get("/v1/collections", headers=api.auth("reader")).json()["collections"]}
    assert listed[col] == 1

    # A key that cannot read the document cannot delete it either: the same 404 as a missing one.
    r = api.client.delete("/v1/documents/pay.txt", headers=api.auth("writer"), params={"collection": col})
    missing = api.client.delete("/v1/documents/nothing.txt", headers=api.auth("writer"), params={"collection": col})
    assert r.status_code == missing.status_code == 404
    assert r.json()["error"]["message"] == f"no document 'pay.txt' in collection {col!r}"

    # Relabelling needs admin; it is a metadata write.
    r = api.client.put("/v1/documents/pay.txt/access", headers=api.auth("writer"), json={"labels": [], "collection": col})
    assert r.status_code == 403
    r = api.client.get("/v1/documents/pay.txt/access", headers=api.auth("hr_reader"), params={"collection": col})
    assert r.status_code == 200 and r.json()["labels"] == ["group:hr"]
    r = api.client.put("/v1/documents/pay.txt/access", headers=api.auth("hr_admin"),
                       json={"labels": ["group:finance"], "collection": col})
    assert r.status_code == 200 and r.json()["labels"] == ["group:finance"], r.text
    assert _found(api, "hr_reader", col) == {"note.txt"}
    r = api.client.put("/v1/documents/pay.txt/access", headers=api.auth("admin"), json={"labels": [], "collection": col})
    assert r.status_code == 200 and r.json()["records"] >= 2
    assert _found(api, "reader", col) == {"note.txt", "pay.txt"}
    r = api.client.put("/v1/documents/pay.txt/access", headers=api.auth("admin"),
                       json={"labels": ["finance"], "collection": col})
    assert r.status_code == 400 and "group:<name>" in r.json()["error"]["message"]
    r = api.client.post("/v1/documents", headers=api.auth("writer"), data={"collection": col, "access": "hr"},
                        files=[("files", ("x.txt", b"payroll"))])
    assert r.status_code == 400
