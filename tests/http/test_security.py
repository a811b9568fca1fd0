"""Acceptance 4: keys, scopes, collection limits, upload names and sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmrag.http.apikeys import KeyStore, hash_token
from mmrag.http.routes.documents import safe_name
from tests.helpers.api import Api, make_api


def test_no_key_is_401_with_a_bearer_challenge(api: Api) -> None:
    for method, path in [("post", "/v1/search"), ("post", "/v1/answer"), ("post", "/v1/chat/completions"),
                         ("get", "/v1/collections"), ("post", "/v1/documents"), ("delete", "/v1/documents/x.txt")]:
        r = getattr(api.client, method)(path, **({"json": {}} if method == "post" else {}))
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"


def test_a_wrong_or_revoked_key_is_401(api: Api) -> None:
    r = api.client.get("/v1/collections", headers={"Authorization": "Bearer mmrag_00000000_" + "x" * 43})
    assert r.status_code == 401
    token = api.tokens["reader"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert api.client.get("/v1/collections", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    store = KeyStore(api.data_dir / "api_keys.json")
    store.revoke(token.split("_")[1])
    assert api.client.get("/v1/collections", headers=api.auth("reader")).status_code == 401


def test_a_read_key_cannot_upload_or_delete(api: Api) -> None:
    a = api.col("a")
    assert api.upload("writer", a, ("doc.txt", b"The lighthouse keeper works at night.")).status_code == 201
    r = api.upload("reader", a, ("other.txt", b"Something else entirely."))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = api.client.delete("/v1/documents/doc.txt", params={"collection": a}, headers=api.auth("reader"))
    assert r.status_code == 403
    r = api.client.delete(f"/v1/collections/{a}", headers=api.auth("writer"))
    assert r.status_code == 403, "dropping a collection needs admin"
    # ... and nothing changed:
    r = api.client.post("/v1/search", json={"query": "lighthouse keeper", "collection": a, "retriever": "bm25"},
                        headers=api.auth("reader"))
    assert [h["doc_id"] for h in r.json()["hits"]] == ["doc.txt"]
    assert not (api.data_dir / "uploads" / a / "other.txt").exists()


def test_a_key_for_collection_a_cannot_touch_b(api: Api) -> None:
    a, b = api.col("a"), api.col("b")
    assert api.upload("writer", b, ("secret.txt", b"The vault code is in the blue folder.")).status_code == 201
    r = api.client.post("/v1/search", json={"query": "vault code", "collection": b}, headers=api.auth("reader_a"))
    assert r.status_code == 403
    r = api.client.post("/v1/answer", json={"question": "Where is the vault code?", "collection": b},
                        headers=api.auth("reader_a"))
    assert r.status_code == 403
    r = api.client.post("/v1/chat/completions", headers=api.auth("reader_a"),
                        json={"model": "mmrag", "collection": b, "messages": [{"role": "user", "content": "vault?"}]})
    assert r.status_code == 403
    assert api.upload("writer_a", b, ("x.txt", b"overwrite attempt")).status_code == 403
    assert api.upload("writer_a", a, ("x.txt", b"allowed in a")).status_code == 201
    listed = api.client.get("/v1/collections", headers=api.auth("reader_a")).json()["collections"]
    assert [c["name"] for c in listed] == [a], "other collections are not even listed"


@pytest.mark.parametrize("name", ["../../escape.txt", "/etc/cron.d/evil.txt", "..\\..\\win.txt",
                                  "C:\\Windows\\evil.txt", "sub/dir/../../up.txt", "./.hidden.txt"])
def test_upload_names_stay_inside_the_data_dir(api: Api, name: str) -> None:
    a = api.col("a")
    r = api.upload("writer", a, (name, b"Harmless text about gardening and tomatoes."))
    assert r.status_code == 201, r.text
    stored = r.json()["doc_ids"][0]
    assert "/" not in stored and "\\" not in stored and not stored.startswith(".")
    folder = (api.data_dir / "uploads" / a).resolve()
    assert (folder / stored).is_file()
    outside = [p for p in api.data_dir.parent.rglob("*.txt") if folder not in p.resolve().parents]
    assert outside == [], f"written outside the upload folder: {outside}"


def test_unusable_names_are_refused() -> None:
    from mmrag.errors import InvalidInputError

    for name in ["", "..", "/", "../", "\x00\x01", "a/" + "x" * 300 + ".txt"]:
        with pytest.raises(InvalidInputError):
            safe_name(name)
    assert safe_name("../../a b.txt") == "a b.txt"


def test_a_body_over_the_limit_is_413_and_nothing_is_stored(api: Api) -> None:
    a = api.col("a")
    big = b"word " * (300 * 1024)  # 1.5 MiB against a 1 MiB limit
    r = api.upload("writer", a, ("big.txt", big))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert not any((api.data_dir / "uploads").rglob("*")) if (api.data_dir / "uploads").exists() else True
    assert a not in [c["name"] for c in api.client.get("/v1/collections", headers=api.auth("admin")).json()["collections"]]


def test_a_chunked_body_over_the_limit_is_413(api: Api) -> None:
    a = api.col("a")
    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"collection\"\r\n\r\n{a}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\n").encode()

    def body():  # type: ignore[no-untyped-def]  # a generator: sent chunked, with no Content-Length
        yield head
        for _ in range(30):
            yield b"y" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = api.client.post("/v1/documents", content=body(),
                        headers={**api.auth("writer"), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    uploads = api.data_dir / "uploads"
    assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))


def test_unsupported_type_is_415(api: Api) -> None:
    r = api.upload("writer", api.col("a"), ("tool.exe", b"MZ\x90\x00"))
    assert r.status_code == 415 and ".txt" in r.json()["error"]["message"]


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    token, key = store.create("bot", scopes=["read"], collections=["kb"])
    raw = (tmp_path / "keys.json").read_text()
    assert token not in raw and token.split("_", 2)[2] not in raw
    assert json.loads(raw)["keys"][0]["hash"] == hash_token(token)
    assert oct(os.stat(tmp_path / "keys.json").st_mode & 0o777) == "0o600"
    assert store.authenticate(token) == key
    assert key.allows("read", "kb") and not key.allows("read", "other") and not key.allows("write", "kb")


def test_scopes_imply_downwards(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, admin = store.create("a", scopes=["admin"])
    _, writer = store.create("w", scopes=["write"])
    assert admin.allows("read") and admin.allows("write") and admin.allows("admin")
    assert writer.allows("read") and writer.allows("write") and not writer.allows("admin")


def test_auth_off_admits_everyone(tmp_path: Path) -> None:
    gen = make_api(tmp_path / "data", None)
    api = next(gen)
    api.services.settings.api.auth = False
    assert api.client.get("/v1/collections").status_code == 200
    gen.close()
