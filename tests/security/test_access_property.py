"""Acceptance line 1 of issue 28: no caller ever receives anything from a document outside its groups.

Over random documents, labels, keys and queries, through the Python API, HTTP (search, answer,
chat completions, collection counts, image bytes, document labels) and MCP (search, answer,
get_document, list_collections): every hit, citation, image and count is of a document the
caller may read; no response holds the secret word of a document it may not read; and ``k`` is
still filled when enough allowed documents match.

Labels arrive by all three ingest routes (a JSONL ``access`` field, a ``.mmrag-access`` folder
file, and a run's ``--access`` labels), and ``access.unlabelled`` is drawn too. The server is the
real app on real Chroma (embedded) and tantivy; the embedders and chat model are the hashing and
echo fakes, which change nothing about filtering (the echo model repeats its prompt, so a
forbidden document's text in the context would show up in the answer).

``test_filter_semantics_agree`` checks the rule itself: the filter :func:`access_where` builds
selects exactly what :func:`can_read` allows in real Chroma, in tantivy and in the in-memory fake.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmrag.http.apikeys import KeyStore
from mmrag.indexing import Indexer
from mmrag.keyword import analyze
from mmrag.retrieval import Searcher
from mmrag.security.labels import Caller, access_where, can_read, label_metadata
from mmrag.security.rules import AccessRules
from mmrag.types import Query, Record
from tests.helpers.api import Api, make_api

VOCAB = ["harbour", "ledger", "orchid", "granite", "violin", "meadow", "copper", "lantern"]
GROUPS = ["a", "b", "c"]
LABELS = [f"group:{g}" for g in GROUPS] + ["user:ann"]
RETRIEVERS = ["clip", "text", "bm25", "hybrid"]

label_sets = st.lists(st.sampled_from(LABELS), max_size=2, unique=True)


@dataclass
class Doc:
    """What the test knows about one ingested document."""

    doc_id: str
    labels: tuple[str, ...]
    secret: str
    text: str | None  # None: an image
    images: int = 0


@st.composite
def corpora(draw: st.DrawFn) -> dict[str, Any]:
    def words() -> str:
        return " ".join(draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4)))

    return {
        "jsonl": [(words(), draw(label_sets)) for _ in range(draw(st.integers(1, 6)))],
        "folder_labels": draw(label_sets),
        "folder": [words() for _ in range(draw(st.integers(0, 3)))],
        "images": draw(st.integers(0, 2)),
        "run_labels": draw(label_sets),
        "run": [words() for _ in range(draw(st.integers(0, 2)))],
        "unlabelled": draw(st.sampled_from(["public", "private"])),
    }


callers = st.fixed_dictionaries({
    "groups": st.lists(st.sampled_from([*GROUPS, "*"]), max_size=2, unique=True),
    "subject": st.sampled_from([None, "ann", "bob"]),
})
queries = st.fixed_dictionaries({
    "text": st.lists(st.sampled_from(VOCAB), min_size=1, max_size=3).map(" ".join),
    "k": st.integers(1, 8),
    "retriever": st.sampled_from(RETRIEVERS),
})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app on embedded Chroma, trusting JWTs signed by :data:`IDP` (an RSA key made here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    folder = tmp_path_factory.mktemp("privacy")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = folder / "idp.pem"
    pem.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    IDP["key"] = private
    for api in make_api(folder / "data", None):
        api.services.settings.access.jwt_key_file = pem
        api.services.settings.access.jwt_issuer = "https://idp.test"
        api.services.__dict__.pop("jwt_verifier", None)
        yield api


#: The identity provider's signing key (the test's own).
IDP: dict[str, Any] = {}


def _jwt(groups: list[str], subject: str) -> str:
    import time

    import jwt

    claims = {"sub": subject, "groups": groups, "iss": "https://idp.test", "exp": int(time.time()) + 600}
    return jwt.encode(claims, IDP["key"], algorithm="RS256")


def _png(seed: int) -> bytes:
    from PIL import Image

    rgb = tuple(int(x) for x in np.random.default_rng(seed).integers(0, 256, 3))
    out = io.BytesIO()
    Image.new("RGB", (48, 40), rgb).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def _build(api: Api, root: Path, corpus: dict[str, Any]) -> tuple[str, list[Doc]]:
    """Write the corpus to files, ingest it in two runs, and return the collection and its documents."""
    col = api.col(uuid.uuid4().hex[:8])
    docs: list[Doc] = []
    first, second = root / "first", root / "second"
    (first / "locked").mkdir(parents=True)
    second.mkdir()

    def secret() -> str:
        return f"zz{uuid.uuid4().hex[:10]}"

    lines = []
    for n, (words, labels) in enumerate(corpus["jsonl"]):
        s = secret()
        lines.append(json.dumps({"_id": f"rec{n}", "text": f"{words} {s}", "access": ",".join(labels)}))
        docs.append(Doc(f"rec{n}", tuple(sorted(labels)), s, f"{words} {s}"))
    (first / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    folder_labels = tuple(sorted(corpus["folder_labels"]))
    (first / "locked" / ".mmrag-access").write_text("# who reads this folder\n" + "\n".join(folder_labels) + "\n")
    for n, words in enumerate(corpus["folder"]):
        s = secret()
        (first / "locked" / f"note{n}.txt").write_text(f"{words} {s}")
        docs.append(Doc(f"locked/note{n}.txt", folder_labels, s, f"{words} {s}"))
    for n in range(corpus["images"]):
        (first / "locked" / f"pic{n}.png").write_bytes(_png(hash((col, n)) & 0xFFFF))
        docs.append(Doc(f"locked/pic{n}.png", folder_labels, "", None, images=1))
    run_labels = tuple(sorted(corpus["run_labels"]))
    for n, words in enumerate(corpus["run"]):
        s = secret()
        (second / f"memo{n}.txt").write_text(f"{words} {s}")
        docs.append(Doc(f"memo{n}.txt", run_labels, s, f"{words} {s}"))
    api.services.settings.access.unlabelled = corpus["unlabelled"]
    kb = api.services.kb(col, create=True)
    for folder, labels in ((first, ()), (second, run_labels)):
        summary = Indexer(kb, access=AccessRules(labels=labels, roots=[folder])).ingest([folder])
        assert not summary.failed, summary.failed
    return col, docs


def _allowed(docs: list[Doc], caller: Caller, unlabelled: str) -> set[str]:
    return {d.doc_id for d in docs if can_read(caller, label_metadata(d.labels), unlabelled)}


def _expected_count(docs: list[Doc], allowed: set[str], q: dict[str, Any]) -> int:
    """How many hits ``k`` must be filled to: allowed records the retriever can find."""
    texts = [d for d in docs if d.doc_id in allowed and d.text is not None]
    images = sum(d.images for d in docs if d.doc_id in allowed)
    if q["retriever"] == "bm25":
        terms = set(analyze(q["text"]))
        matching = sum(1 for d in texts if terms & set(analyze(d.text or "")))
    elif q["retriever"] == "text":
        matching = len(texts)
    else:  # clip ranks text and image records; hybrid adds CLIP's images to the text indexes' lists
        matching = len(texts) + images
    return min(q["k"], matching)


def _no_secrets(body: str, docs: list[Doc], allowed: set[str], where: str) -> None:
    for d in docs:
        if d.doc_id not in allowed and d.secret:
            assert d.secret not in body, f"{where}: leaked {d.doc_id} ({d.labels})"


def _mcp(api: Api, token: str, tool: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], str]:
    r = api.client.post("/mcp", headers={"Authorization": f"Bearer {token}",
                                         "Accept": "application/json, text/event-stream"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": tool, "arguments": arguments}})
    assert r.status_code == 200, r.text
    return r.json()["result"], r.text


def _check_caller(api: Api, col: str, docs: list[Doc], who: dict[str, Any], q: dict[str, Any],
                  unlabelled: str) -> None:
    caller = Caller.of(who["groups"], who["subject"])
    allowed = _allowed(docs, caller, unlabelled)
    expected = _expected_count(docs, allowed, q)
    if who["subject"] is None:
        token, _ = KeyStore(api.data_dir / "api_keys.json").create("prop", scopes=["read"], collections=["*"],
                                                                  groups=who["groups"])
    else:  # a user: a token from the identity provider (which never grants "*")
        caller = Caller.of([g for g in who["groups"] if g != "*"], who["subject"])
        allowed = _allowed(docs, caller, unlabelled)
        expected = _expected_count(docs, allowed, q)
        token = _jwt(list(caller.groups), who["subject"])
    headers = {"Authorization": f"Bearer {token}"}

    # The Python API.
    kb = api.services.kb(col)
    hits = Searcher(kb, unlabelled=unlabelled).as_caller(caller).search(Query(text=q["text"]), q["k"],
                                                                         retriever=q["retriever"])
    assert {h.doc_id for h in hits} <= allowed
    assert len(hits) == expected, (q, [h.doc_id for h in hits], allowed)

    # HTTP search.
    r = api.client.post("/v1/search", headers=headers, json={"query": q["text"], "collection": col, "k": q["k"],
                                                             "retriever": q["retriever"]})
    assert r.status_code == 200, r.text
    got = r.json()["hits"]
    assert {h["doc_id"] for h in got} <= allowed and len(got) == expected
    _no_secrets(r.text, docs, allowed, "/v1/search")
    for h in got:
        if h["image_uri"]:
            assert api.client.get(h["image_uri"], headers=headers).status_code == 200

    # Answers (the echo model repeats the context it was given) and chat completions.
    r = api.client.post("/v1/answer", headers=headers, json={"question": q["text"], "collection": col, "k": q["k"]})
    assert r.status_code == 200, r.text
    assert {c["doc_id"] for c in r.json()["citations"]} <= allowed
    _no_secrets(r.text, docs, allowed, "/v1/answer")
    r = api.client.post("/v1/chat/completions", headers=headers,
                        json={"model": "mmrag", "collection": col, "k": q["k"],
                              "messages": [{"role": "user", "content": q["text"]}]})
    assert r.status_code == 200, r.text
    assert {c["doc_id"] for c in r.json()["citations"]} <= allowed
    _no_secrets(r.text, docs, allowed, "/v1/chat/completions")

    # Counts.
    r = api.client.get("/v1/collections", headers=headers)
    listed = {c["name"]: c for c in r.json()["collections"]}
    assert listed[col]["documents"] == len(allowed)
    assert listed[col]["text_records"] == sum(1 for d in docs if d.doc_id in allowed and d.text is not None)

    # Lookups by id: a forbidden record or document answers exactly as a missing one does.
    missing = api.client.get(f"/v1/collections/{col}/images/nope", headers=headers)
    assert missing.status_code == 404
    for d in docs:
        if d.doc_id in allowed:
            continue
        if d.images:
            for image in kb.clip_store.records_of([d.doc_id]):
                r = api.client.get(f"/v1/collections/{col}/images/{quote(image[0], safe='')}", headers=headers)
                assert r.status_code == 404
                assert r.json()["error"]["message"] == f"no record {image[0]!r} in collection {col!r}"
        r = api.client.get(f"/v1/documents/{d.doc_id}/access", headers=headers, params={"collection": col})
        assert r.status_code == 404
        assert r.json()["error"]["message"] == f"no document {d.doc_id!r} in collection {col!r}"

    # MCP.
    result, text = _mcp(api, token, "search", {"query": q["text"], "collection": col, "k": q["k"],
                                               "retriever": q["retriever"]})
    assert not result.get("isError"), result
    assert {h["doc_id"] for h in result["structuredContent"]["hits"]} <= allowed
    assert len(result["structuredContent"]["hits"]) == expected
    _no_secrets(text, docs, allowed, "mcp search")
    result, text = _mcp(api, token, "answer", {"question": q["text"], "collection": col, "k": q["k"]})
    _no_secrets(text, docs, allowed, "mcp answer")
    result, text = _mcp(api, token, "list_collections", {})
    counts = {c["name"]: c["documents"] for c in result["structuredContent"]["collections"]}
    assert counts[col] == len(allowed)
    for d in docs:
        if d.doc_id not in allowed and d.text is not None:
            ids = [rid for rid, _, _ in kb.text_store.records_of([d.doc_id])]
            result, text = _mcp(api, token, "get_document", {"id": ids[0], "collection": col})
            assert result.get("isError") and "no record" in text
            _no_secrets(text, docs, allowed, "mcp get_document")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(corpus=corpora(), who=st.lists(callers, min_size=1, max_size=3), q=queries)
def test_no_caller_sees_outside_its_groups(api: Api, tmp_path_factory: pytest.TempPathFactory,
                                           corpus: dict[str, Any], who: list[dict[str, Any]],
                                           q: dict[str, Any]) -> None:
    col, docs = _build(api, tmp_path_factory.mktemp("corpus"), corpus)
    for caller in who:
        _check_caller(api, col, docs, caller, q, corpus["unlabelled"])


# -- the rule in every index -------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(records=st.lists(label_sets, min_size=1, max_size=12), who=callers,
       unlabelled=st.sampled_from(["public", "private"]))
def test_filter_semantics_agree(tmp_path_factory: pytest.TempPathFactory, records: list[list[str]],
                                who: dict[str, Any], unlabelled: str) -> None:
    """Chroma, tantivy and the in-memory fake select exactly the records :func:`can_read` allows."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from mmrag.security.labels import NoAccess
    from mmrag.stores.memory import matches
    from mmrag.stores.tantivy import TantivyKeywordIndex

    caller = Caller.of(who["groups"], who["subject"])
    metas = [{"doc_id": f"d{n}", "source": f"/c/d{n}", **label_metadata(ls)} for n, ls in enumerate(records)]
    want = {m["doc_id"] for m in metas if can_read(caller, m, unlabelled)}
    try:
        where = access_where(caller, unlabelled)
    except NoAccess:
        assert want == set()
        return
    if where is None:
        assert want == {m["doc_id"] for m in metas}
        return
    assert {m["doc_id"] for m in metas if matches(m, where)} == want
    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    col = client.get_or_create_collection(f"acl-{uuid.uuid4().hex[:8]}", embedding_function=None)
    col.add(ids=[m["doc_id"] for m in metas], embeddings=np.ones((len(metas), 2), dtype=np.float32), metadatas=metas)
    assert set(col.get(where=where)["ids"]) == want
    index = TantivyKeywordIndex(tmp_path_factory.mktemp("kw"))
    index.write(records=[Record(m["doc_id"], (), m, "lantern") for m in metas])
    assert {h.doc_id for h in index.query("lantern", 100, where=where)} == want
