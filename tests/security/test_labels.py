"""Labels at ingest, relabelling as a metadata write, and callers from JWTs (issue 28)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from mmrag.errors import ConfigError, InvalidInputError, NotFoundError, UnauthorizedError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.retrieval import Searcher
from mmrag.security.labels import Caller, parse_labels
from mmrag.security.relabel import set_labels
from mmrag.security.rules import AccessRules, LabelTable
from mmrag.types import Query


class NoEmbedding:
    """An embedder that must not be called: relabelling reads no model."""

    name, dim = "hashing", 8

    def identity(self) -> dict[str, Any]:
        raise AssertionError("a relabel opened the embedder")

    def embed_texts(self, texts: Any) -> np.ndarray:
        raise AssertionError("a relabel embedded text")


def _seen(kb: KnowledgeBase, caller: Caller, retriever: str = "bm25") -> set[str]:
    hits = Searcher(kb).as_caller(caller).search(Query(text="quarterly salaries"), 10, retriever=retriever)
    return {h.doc_id for h in hits}


def test_labels_from_every_ingest_route_and_relabel_is_a_metadata_write(hashing_kb: KnowledgeBase,
                                                                        tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "hr").mkdir(parents=True)
    (root / "hr" / ".mmrag-access").write_text("group:hr  # the HR folder\n")
    (root / "hr" / "pay.txt").write_text("quarterly salaries of the staff")
    (root / "open.txt").write_text("quarterly salaries, public summary")
    (root / "rows.jsonl").write_text(json.dumps({"_id": "fin1", "text": "quarterly salaries ledger",
                                                 "access": "group:finance, user:ann"}) + "\n")
    Indexer(hashing_kb, access=AccessRules(labels=["group:audit"], roots=[root])).ingest([root])
    table = LabelTable(hashing_kb.manifest)
    assert table.get(hashing_kb.collection, ["hr/pay.txt", "open.txt", "fin1"]) == {
        "hr/pay.txt": ("group:audit", "group:hr"), "open.txt": ("group:audit",),
        "fin1": ("group:audit", "group:finance", "user:ann")}
    for retriever in ("bm25", "text", "clip", "hybrid"):
        assert _seen(hashing_kb, Caller.of(["hr"]), retriever) == {"hr/pay.txt"}
        assert _seen(hashing_kb, Caller.of([], "ann"), retriever) == {"fin1"}
        assert _seen(hashing_kb, Caller.of(["audit"]), retriever) == {"hr/pay.txt", "open.txt", "fin1"}
        assert _seen(hashing_kb, Caller.of([]), retriever) == set()

    # Relabel through a knowledge base whose models fail if touched: no re-embed.
    bare = KnowledgeBase(hashing_kb.data_dir, hashing_kb.collection, hashing_kb.models, clip=NoEmbedding(),
                         text=NoEmbedding())
    vectors = hashing_kb.bare_store("text").embeddings_of(["open.txt"], 10)
    done = set_labels(bare, "open.txt", [])
    assert done["labels"] == [] and done["records"] >= 2
    assert np.array_equal(hashing_kb.bare_store("text").embeddings_of(["open.txt"], 10), vectors)
    for retriever in ("bm25", "text", "clip"):  # the keyword index changed with the stores
        assert _seen(hashing_kb, Caller.of([]), retriever) == {"open.txt"}
    assert _seen(hashing_kb, Caller.of([]), "hybrid") == {"open.txt"}
    assert table.get(hashing_kb.collection, ["open.txt"]) == {"open.txt": ()}

    # A changed file re-ingested without labels keeps the ones it had (it never turns public).
    (root / "hr" / ".mmrag-access").unlink()
    (root / "hr" / "pay.txt").write_text("quarterly salaries of the staff, revised")
    summary = Indexer(hashing_kb).ingest([root])
    assert summary.indexed == 1
    assert _seen(hashing_kb, Caller.of(["hr"])) == {"hr/pay.txt", "open.txt"}
    assert _seen(hashing_kb, Caller.of([])) == {"open.txt"}

    with pytest.raises(NotFoundError):
        set_labels(bare, "no-such-doc", ["group:hr"])
    with pytest.raises(InvalidInputError, match="group:<name>"):
        set_labels(bare, "open.txt", ["finance"])


def test_unlabelled_private_hides_unlabelled_documents(hashing_kb: KnowledgeBase, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("quarterly salaries")
    Indexer(hashing_kb).ingest([tmp_path / "a.txt"])
    assert _seen(hashing_kb, Caller.of(["x"])) == {"a.txt"}
    private = Searcher(hashing_kb, unlabelled="private").as_caller(Caller.of(["x"]))
    assert private.search(Query(text="quarterly salaries"), 5, retriever="hybrid") == []
    assert Searcher(hashing_kb, unlabelled="private").search(Query(text="salaries"), 5, retriever="bm25")
    with pytest.raises(InvalidInputError, match="access.unlabelled"):
        Searcher(hashing_kb, unlabelled="secret")


def test_bad_labels_name_where_they_came_from(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="--access"):
        AccessRules(labels=["finance"])
    (tmp_path / ".mmrag-access").write_text("group:ok\nteam:bad\n")
    (tmp_path / "a.txt").write_text("x")
    rules = AccessRules(roots=[tmp_path])
    with pytest.raises(InvalidInputError, match=r"\.mmrag-access"):
        rules.labels_for(str(tmp_path / "a.txt"), {})
    with pytest.raises(InvalidInputError, match="field 'access'"):
        AccessRules().labels_for("/c/rows.jsonl", {"access": "group:a;drop"})
    assert parse_labels("group:a user:b.c@d, group:a") == ("group:a", "user:b.c@d")


def test_cli_sets_and_shows_labels(hashing_kb: KnowledgeBase, tmp_path: Path) -> None:
    from mmrag.cli import main

    (tmp_path / "a.txt").write_text("quarterly salaries")
    Indexer(hashing_kb).ingest([tmp_path / "a.txt"])
    opts = ["--data-dir", str(hashing_kb.data_dir), "--collection", hashing_kb.collection]
    r = CliRunner().invoke(main, ["access", "set", "a.txt", "--access", "group:hr", *opts])
    assert r.exit_code == 0, r.output
    assert "a.txt: group:hr" in r.output
    assert _seen(hashing_kb, Caller.of([])) == set() and _seen(hashing_kb, Caller.of(["hr"])) == {"a.txt"}
    r = CliRunner().invoke(main, ["access", "show", "--json", *opts])
    assert json.loads(r.output) == {"a.txt": ["group:hr"]}
    r = CliRunner().invoke(main, ["access", "set", "a.txt", "--access", "hr", *opts])
    assert r.exit_code != 0 and "group:<name>" in r.output
    r = CliRunner().invoke(main, ["access", "set", "a.txt", *opts])
    assert r.exit_code == 2


# -- tokens ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    folder = tmp_path_factory.mktemp("idp")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = folder / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "RS256", "use": "sig"}
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return {"key": key, "pem": pem, "jwks": jwks}


def _token(key: Any, **claims: Any) -> str:
    import jwt

    kid = claims.pop("kid", None)
    body = {"sub": "ann", "groups": ["hr"], "iss": "https://idp.test", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def test_jwt_from_a_trusted_key_carries_groups_and_subject(idp: dict[str, Any]) -> None:
    from mmrag.security.tokens import JwtVerifier

    verifier = JwtVerifier(key_file=idp["pem"], issuer="https://idp.test")
    key = verifier.verify(_token(idp["key"]))
    assert key.caller().labels == ("group:hr", "user:ann") and key.scopes == ("read",)
    jwks = JwtVerifier(jwks_file=idp["jwks"], issuer="https://idp.test")
    assert jwks.verify(_token(idp["key"], kid="k1")).groups == ("hr",)
    with pytest.raises(UnauthorizedError, match="kid"):
        jwks.verify(_token(idp["key"], kid="other"))


@pytest.mark.parametrize("claims", [{"exp": 1}, {"iss": "https://evil.test"}, {"groups": "hr,*"},
                                    {"groups": [1]}, {"sub": None}])
def test_jwt_refusals(idp: dict[str, Any], claims: dict[str, Any]) -> None:
    from mmrag.security.tokens import JwtVerifier

    verifier = JwtVerifier(key_file=idp["pem"], issuer="https://idp.test")
    token = _token(idp["key"], **claims)
    if claims == {"groups": "hr,*"}:  # an identity provider cannot grant every document
        assert verifier.verify(token).caller().unrestricted is False
        return
    with pytest.raises(UnauthorizedError):
        verifier.verify(token)


def test_jwt_signed_with_the_public_key_as_a_secret_is_refused(idp: dict[str, Any]) -> None:
    import jwt

    from mmrag.security.tokens import JwtVerifier

    with pytest.raises(ConfigError, match="HS256"):
        JwtVerifier(key_file=idp["pem"], algorithms=["HS256"])
    forged = jwt.encode({"sub": "eve", "groups": ["hr"], "exp": int(time.time()) + 60}, "a-shared-secret",
                        algorithm="HS256")
    with pytest.raises(UnauthorizedError):
        JwtVerifier(key_file=idp["pem"]).verify(forged)


def test_ingest_access_over_an_indexed_folder_labels_its_unchanged_files(hashing_kb: KnowledgeBase,
                                                                        tmp_path: Path) -> None:
    """Before, unchanged files were skipped, and `ingest --access` left them readable by every key."""
    (tmp_path / "a.txt").write_text("quarterly salaries")
    Indexer(hashing_kb).ingest([tmp_path])
    assert _seen(hashing_kb, Caller.of([])) == {"a.txt"}
    summary = Indexer(hashing_kb, access=AccessRules(labels=["group:hr"], roots=[tmp_path])).ingest([tmp_path])
    assert summary.unchanged == 1 and summary.indexed == 0 and summary.text_embeddings == 0
    for retriever in ("bm25", "text", "clip", "hybrid"):
        assert _seen(hashing_kb, Caller.of([]), retriever) == set()
        assert _seen(hashing_kb, Caller.of(["hr"]), retriever) == {"a.txt"}
