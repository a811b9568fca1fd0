"""Snapshots: a consistent, checksummed copy of a knowledge base version, and its restore.

Acceptance (issue 12): snapshot, delete the data dir, restore: the ids, vectors, metadata, keyword
results and evaluation figures are all the same; a corrupted snapshot is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import os
import resource
import shutil
import signal
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import InvalidInputError, StoreDamagedError, StoreError
from mmrag.evaluation import EvalQuery, evaluate_retrieval
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle import snapshots
from mmrag.lifecycle.versions import Versions
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.stores.chroma import OWNER_KEY, ChromaStore, collection_info, collection_names
from mmrag.stores.memory import InMemoryStore
from mmrag.types import ImageAsset, Query

QUERIES = ["red circle first aid", "visitor parking east lift", "opening hours weekdays"]
EVAL = [
    EvalQuery("aid", frozenset({"signs.txt"}), text="Which sign marks a first-aid kit?"),
    EvalQuery("parking", frozenset({"visitors.md"}), text="Where is visitor parking?"),
    EvalQuery("hours", frozenset({"hours.txt"}), text="When does the building close?"),
    EvalQuery("red", frozenset({"red.png", "signs.txt"}), text="a red circle"),
]


def make_corpus(root: Path) -> Path:
    from PIL import Image, ImageDraw

    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "signs.txt").write_text("A red circle sign marks the first-aid kit. A green square marks the exit.\n"
                                      "Blue triangles warn of wet floors near the kitchen.\n")
    (corpus / "visitors.md").write_text("# Visitors\n\nVisitor parking is behind the east lift, on level -1.\n\n"
                                        "## Badges\n\nBadges are issued at the front desk.\n")
    (corpus / "hours.txt").write_text("The building opens at 08:00 and closes at 18:00 on weekdays.\n")
    image = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 80, 80), fill=(220, 0, 0))
    image.save(corpus / "red.png")
    return corpus


def state(kb: KnowledgeBase) -> dict[str, Any]:
    """Everything a restore must reproduce, keyed independently of the collection's name.

    Vectors are kept apart (``<role> vectors``) and compared by :func:`assert_same`.
    """
    out: dict[str, Any] = {}
    for role, name in (("clip", kb.clip_name), ("image", kb.image_name), ("text", kb.text_name)):
        records, vectors = {}, {}
        store = kb.open_collection(name, None, owned=False)
        for batch in store.iter_batches(2):  # small pages: paging is exercised
            for i, rid in enumerate(batch.ids):
                records[rid] = (batch.metadatas[i], batch.documents[i])
                vectors[rid] = batch.vectors[i]
        out[role] = records
        out[role + " vectors"] = vectors
        out[role + " identity"] = store.identity
    out["keyword rows"] = list(kb.keyword.rows())
    out["keyword hits"] = [[(h.id, round(h.score, 5), h.text) for h in kb.keyword.query(q, 5)] for q in QUERIES]
    out["documents"] = [dataclasses.astuple(d) for d in kb.manifest.all(kb.collection)]
    out["totals"] = kb.manifest.totals(kb.collection)
    out["probes"] = kb.manifest.read("SELECT name, query, expect, k FROM probes WHERE kb=? ORDER BY name",
                                     (kb.collection,))
    out["drift"] = kb.manifest.read("SELECT modality, value FROM drift_refs WHERE collection=?", (kb.collection,))
    return out


def assert_same(after: dict[str, Any], before: dict[str, Any]) -> None:
    """Equal states; vectors to 1e-6 (a snapshot holds them bit for bit, but Chroma 1.5.9's write path
    can move a float32 by an ulp or two: measured up to 3e-8 on unit vectors)."""
    assert after.keys() == before.keys()
    for key in before:
        if key.endswith(" vectors"):
            assert after[key].keys() == before[key].keys(), key
            for rid, vec in before[key].items():
                np.testing.assert_allclose(after[key][rid], vec, rtol=0, atol=1e-6, err_msg=f"{key} {rid}")
        else:
            assert after[key] == before[key], key


def searches(kb: KnowledgeBase, image: Path) -> list[list[Any]]:
    """Every retriever's hits for the queries, and an image query's."""
    searcher = Searcher(kb)
    got = [searcher.search(Query(text=q), 5, retriever=r) for r in ("clip", "text", "bm25", "hybrid") for q in QUERIES]
    return got + [searcher.search(Query(image=ImageAsset(path=str(image))), 3)]


def assert_same_hits(after: list[list[Any]], before: list[list[Any]]) -> None:
    """Same hits in the same order; scores to 1e-5 (see :func:`assert_same`)."""
    assert [[(h.id, h.doc_id, h.modality, h.text, h.metadata) for h in hits] for hits in after] == \
        [[(h.id, h.doc_id, h.modality, h.text, h.metadata) for h in hits] for hits in before]
    np.testing.assert_allclose([h.score for hits in after for h in hits], [h.score for hits in before for h in hits],
                               rtol=0, atol=1e-5)


def add_lifecycle_rows(kb: KnowledgeBase) -> None:
    kb.manifest.write("INSERT OR REPLACE INTO probes VALUES (?,?,?,?,?,?)",
                      [(kb.collection, "aid", "first aid sign", json.dumps(["signs.txt"]), 5, 1.0)])
    kb.manifest.write("INSERT OR REPLACE INTO drift_refs VALUES (?,?,?,?)",
                      [(kb.collection, "text", '{"mean": [0.5]}', 2.0)])


def hashing(data_dir: Path, name: str = "test", store_url: str | None = None, backend: str = "chroma") -> KnowledgeBase:
    return KnowledgeBase(data_dir, name, resolve_models(Settings()), store_url=store_url, clip=HashingEmbedder(16),
                         text=HashingEmbedder(8), vector_store=backend)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The vector store a test's snapshots are taken from and restored into: Chroma, or (where a test
    is parametrised with :data:`EVERY_STORE`) the memory fake too, since snapshots go through the
    VectorStore protocol and work on every backend its contract tests cover."""
    return str(getattr(request, "param", "chroma"))


EVERY_STORE = pytest.mark.parametrize("backend", ["chroma", "memory"], indirect=True)


@pytest.fixture
def small_snapshot(tmp_path: Path, backend: str) -> tuple[Path, Path]:
    """A hashing-fake knowledge base ingested and snapshotted in batches of 2: (snapshot, data dir)."""
    kb = hashing(tmp_path / "data", backend=backend)
    assert not Indexer(kb).ingest([make_corpus(tmp_path)]).failed
    add_lifecycle_rows(kb)
    kb.close()
    info = snapshots.create("test", tmp_path / "snap", data_dir=tmp_path / "data", batch=2, vector_store=backend)
    assert info.counts["text"] >= 3 and info.counts["image"] == 1 and info.counts["probes"] == 1
    return tmp_path / "snap", tmp_path / "data"


@pytest.mark.slow
def test_round_trip_with_real_models_keeps_records_keyword_results_and_figures(
        offline_kb: KnowledgeBase, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    summary = Indexer(offline_kb).ingest([corpus])
    assert summary.failed == [] and summary.indexed == 4
    add_lifecycle_rows(offline_kb)
    before = state(offline_kb)
    found = searches(offline_kb, corpus / "red.png")
    figures = evaluate_retrieval(Searcher(offline_kb), EVAL, retriever="hybrid", k=3)
    data_dir, clip, text = offline_kb.data_dir, offline_kb.clip, offline_kb.text
    offline_kb.close()

    cli = ["--data-dir", str(data_dir), "--json"]
    made = CliRunner().invoke(main, ["snapshot", "create", "test", str(tmp_path / "snap"), *cli])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["label"] == "test@1"
    shutil.copy(data_dir / "snapshot.key", tmp_path / "kept.key")  # kept apart, as a backup's key must be
    shutil.rmtree(data_dir)
    done = CliRunner().invoke(main, ["snapshot", "restore", str(tmp_path / "snap"), "--as", "restored", *cli,
                                     "--key", str(tmp_path / "kept.key")])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["source_label"] == "test@1"

    restored = KnowledgeBase(data_dir, "restored", offline_kb.models, clip=clip, text=text)
    after = state(restored)
    assert after["clip"] and after["image"] and after["text"]
    assert_same(after, before)
    assert_same_hits(searches(restored, corpus / "red.png"), found)
    again = evaluate_retrieval(Searcher(restored), EVAL, retriever="hybrid", k=3)
    assert again.metrics == figures.metrics and again.per_query == figures.per_query
    assert restored.health().problems == []
    restored.close()


@EVERY_STORE
def test_restore_under_a_new_name_in_an_empty_data_dir(small_snapshot: tuple[Path, Path], tmp_path: Path,
                                                       backend: str) -> None:
    snap, data = small_snapshot
    source = hashing(data, backend=backend)
    before = state(source)
    source.close()
    listing = json.loads((snap / "snapshot.json").read_text())
    assert listing["source"] == {**listing["source"], "kb": "test", "label": "test@1", "physical": "test"}
    assert len(listing["collections"]["text"]["batches"]) >= 2  # batches of 2 records
    assert all(len(f["sha256"]) == 64 for f in listing["files"].values())

    info = snapshots.restore(snap, "copy", data_dir=tmp_path / "other", key_file=data / "snapshot.key",
                             vector_store=backend)
    assert (info.trust, info.roots) == ("key", [])  # another data dir's folders are not trusted
    assert info.counts == listing["counts"]
    copy = hashing(tmp_path / "other", "copy", backend=backend)
    assert_same(state(copy), before)
    assert Searcher(copy).search(Query(text="visitor parking"), 1, retriever="hybrid")[0].doc_id == "visitors.md"
    # A restored knowledge base is an ordinary one: version 1 of its own name.
    assert Versions(copy.manifest).resolve("copy") == "copy"
    copy.close()


@EVERY_STORE
def test_a_version_label_is_snapshotted_and_an_existing_name_or_out_is_refused(
        small_snapshot: tuple[Path, Path], tmp_path: Path, backend: str) -> None:
    snap, data = small_snapshot
    kb = hashing(data, backend=backend)
    Versions(kb.manifest).adopt("test")
    kb.close()
    info = snapshots.create("test@1", tmp_path / "labelled", data_dir=data, vector_store=backend)
    assert (info.label, info.physical) == ("test@1", "test")
    assert info.counts == json.loads((snap / "snapshot.json").read_text())["counts"]
    with pytest.raises(InvalidInputError, match="not empty"):
        snapshots.create("test", snap, data_dir=data, vector_store=backend)
    with pytest.raises(InvalidInputError, match="already exists"):
        snapshots.restore(snap, "test", data_dir=data, vector_store=backend)
    with pytest.raises(InvalidInputError, match="version label"):
        snapshots.restore(snap, "test@2", data_dir=tmp_path / "fresh")


@EVERY_STORE
@pytest.mark.parametrize("damage", ["flip a vector byte", "delete a file", "edit snapshot.json"])
def test_a_corrupted_snapshot_is_refused_and_nothing_is_created(small_snapshot: tuple[Path, Path],
                                                                tmp_path: Path, damage: str, backend: str) -> None:
    snap, data = small_snapshot
    if damage == "flip a vector byte":
        vectors = snap / "chroma" / "text" / "00001.npy"
        raw = bytearray(vectors.read_bytes())
        raw[-3] ^= 0x01
        vectors.write_bytes(bytes(raw))
        expected = r"chroma/text/00001\.npy has another checksum"
    elif damage == "delete a file":
        (snap / "manifest" / "documents.jsonl").unlink()
        expected = r"manifest/documents\.jsonl is missing"
    else:
        index = json.loads((snap / "snapshot.json").read_text())
        index["counts"]["text"] += 1
        (snap / "snapshot.json").write_text(json.dumps(index))
        expected = "snapshot.json was changed"
    target = tmp_path / "target"
    with pytest.raises(StoreDamagedError, match=expected) as caught:
        snapshots.restore(snap, "copy", data_dir=target, key_file=data / "snapshot.key", vector_store=backend)
    assert "Nothing was restored" in str(caught.value)
    assert not target.exists()  # refused before anything was opened or created
    result = CliRunner().invoke(main, ["snapshot", "restore", str(snap), "--as", "copy", "--data-dir", str(target),
                                       "--key", str(data / "snapshot.key")])
    assert result.exit_code == 1 and "StoreDamagedError" in result.output and "damaged" in result.output


@EVERY_STORE
def test_a_restore_that_fails_part_way_removes_what_it_created(small_snapshot: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    snap, data = small_snapshot
    key = data / "snapshot.key"
    store_class = ChromaStore if backend == "chroma" else InMemoryStore
    real = store_class.upsert_batch
    calls = []

    def failing(self: Any, batch: Any) -> None:
        calls.append(self.name)
        if self.name.endswith("-text") and calls.count(self.name) == 2:
            raise StoreError("Chroma failed to write to 'copy-text': disk full (injected)")
        real(self, batch)

    monkeypatch.setattr(store_class, "upsert_batch", failing)
    target = tmp_path / "target"
    with pytest.raises(StoreError, match="injected"):
        snapshots.restore(snap, "copy", data_dir=target, key_file=key, vector_store=backend)
    monkeypatch.undo()
    kb = hashing(target, "copy", backend=backend)
    assert not kb.existing_collections()
    assert not kb.keyword_dir.exists() and not kb.manifest.has_collection("copy")
    assert kb.manifest.read("SELECT * FROM flags WHERE collection='copy'") == []
    assert kb.manifest.read("SELECT * FROM probes WHERE kb='copy'") == []
    kb.close()
    # The same name restores cleanly afterwards.
    assert snapshots.restore(snap, "copy", data_dir=target, key_file=key, vector_store=backend).counts["documents"] == 4


@pytest.mark.slow
def test_round_trip_against_a_chroma_server(chroma_server: str, tmp_path: Path) -> None:
    source = hashing(tmp_path / "a", store_url=chroma_server)
    assert not Indexer(source).ingest([make_corpus(tmp_path)]).failed
    add_lifecycle_rows(source)
    before = state(source)
    hits = searches(source, tmp_path / "corpus" / "red.png")
    snapshots.create("test", tmp_path / "snap", data_dir=tmp_path / "a", store_url=chroma_server)
    source.drop()  # the server's collections and the data dir are both gone
    source.close()
    shutil.rmtree(tmp_path / "a")

    info = snapshots.restore(tmp_path / "snap", "test", data_dir=tmp_path / "b", store_url=chroma_server,
                             trust_unsigned=True)  # its key went with data dir a
    assert info.counts["documents"] == 4
    copy = hashing(tmp_path / "b", store_url=chroma_server)
    assert_same(state(copy), before)
    assert_same_hits(searches(copy, tmp_path / "corpus" / "red.png"), hits)
    # Owned by the data dir that restored it: it may write, as it would after an ingest.
    assert collection_info(copy.client, copy.text_name)["metadata"][OWNER_KEY] == copy.owner_id  # type: ignore[index]
    copy.check_writable()
    copy.close()


# -- issue 23, finding 5: a hostile snapshot reads nothing outside itself ---------------------------
SECRET = b"TOP-SECRET-PASSPHRASE-42 lives only outside the snapshot"


def forge(snap: Path, data_dir: Path | None = None, *, files: bool = True) -> None:
    """Do what a snapshot's author can: recompute every listed file's sha256 and size (unless not ``files``)
    and the index digest, and, given a data dir whose key they hold, sign again with it (HMAC-SHA256, as
    mmrag signs)."""
    index = json.loads((snap / "snapshot.json").read_text())
    for rel, want in index["files"].items() if files else ():
        path = snap / rel
        if not path.is_symlink() and path.is_file() and not rel.startswith(("/", "..")):
            data = path.read_bytes()
            want.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    index.pop("digest")
    index.pop("signature", None)
    index["digest"] = hashlib.sha256(json.dumps(index, sort_keys=True, default=str).encode()).hexdigest()
    key_file = (data_dir / "snapshot.key") if data_dir is not None else None
    if key_file is not None and key_file.exists():
        key = bytes.fromhex(key_file.read_text().strip())
        mac = hmac.new(key, json.dumps(index, sort_keys=True, default=str).encode(), hashlib.sha256).hexdigest()
        index["signature"] = {"algorithm": "hmac-sha256", "mac": mac,
                              "key_id": hashlib.sha256(b"mmrag-snapshot-key:" + key).hexdigest()[:16]}
    (snap / "snapshot.json").write_text(json.dumps(index))


def holds_secret(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and SECRET in p.read_bytes()]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "loot.txt").write_bytes(SECRET)
    return folder / "loot.txt"


@pytest.fixture
def file_size_limit() -> Any:
    """Files this process writes stop at 64 MiB (EFBIG, not SIGXFSZ), so a regression that copies an endless
    device fails the test instead of filling the disk."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, old[1]))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, old)
    signal.signal(signal.SIGXFSZ, handler)


def _restore_refused(snap: Path, data: Path, match: str) -> str:
    """Restore into the snapshot's own data dir (its signature checks out) and expect a refusal before anything."""
    with pytest.raises(InvalidInputError, match=match) as caught:
        snapshots.restore(snap, "copy", data_dir=data)
    kb = hashing(data, "copy")
    assert not kb.manifest.has_collection("copy") and not kb.keyword_dir.exists()
    assert not collection_names(kb.client) & {kb.clip_name, kb.image_name, kb.text_name}
    kb.close()
    assert holds_secret(data) == []
    assert "Nothing was restored" in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("link", ["file", "dir"])
def test_finding5_an_unlisted_symlink_is_refused_and_nothing_outside_is_copied(
        small_snapshot: tuple[Path, Path], secret: Path, link: str) -> None:
    snap, data = small_snapshot
    (snap / "keyword" / "extra").symlink_to(secret if link == "file" else secret.parent)
    forge(snap, data)
    _restore_refused(snap, data, r"keyword/extra is a symbolic link")


def test_finding5_an_unlisted_link_to_dev_zero_is_refused_without_reading_it(
        small_snapshot: tuple[Path, Path], file_size_limit: Any) -> None:
    snap, data = small_snapshot
    (snap / "keyword" / "zero").symlink_to("/dev/zero")
    forge(snap, data)
    _restore_refused(snap, data, r"keyword/zero is a symbolic link")


def test_finding5_a_fifo_is_refused(small_snapshot: tuple[Path, Path]) -> None:
    snap, data = small_snapshot
    os.mkfifo(snap / "keyword" / "pipe")
    forge(snap, data)
    _restore_refused(snap, data, r"keyword/pipe is not a regular file")


@pytest.mark.parametrize("path", ["absolute", "dotdot"])
def test_finding5_a_listed_path_outside_the_snapshot_is_refused_without_asking_the_file_system(
        small_snapshot: tuple[Path, Path], secret: Path, path: str) -> None:
    snap, data = small_snapshot
    messages = []
    for target in (secret, secret.with_name("absent.txt")):  # one that exists, one that does not
        rel = str(target) if path == "absolute" else os.path.relpath(target, snap)
        index = json.loads((snap / "snapshot.json").read_text())
        index["files"] = {k: v for k, v in index["files"].items() if not k.startswith(("/", ".."))}
        index["files"][rel] = {"sha256": "0" * 64, "size": 1}
        (snap / "snapshot.json").write_text(json.dumps(index))
        forge(snap, data)
        message = _restore_refused(snap, data, "not a plain relative path")
        messages.append(message.replace(rel, "PATH"))
        assert "bytes" not in message and "missing" not in message  # neither its size nor its existence
    assert messages[0] == messages[1]  # an existing and a missing file answer alike


def test_finding5_a_huge_npy_header_is_refused_before_anything_is_allocated(
        small_snapshot: tuple[Path, Path]) -> None:
    snap, data = small_snapshot
    npy = snap / "chroma" / "text" / "00000.npy"
    with open(npy, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        payload = fh.read()
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (2_000_000_000, 384)})
    npy.write_bytes(buf.getvalue() + payload)
    forge(snap, data)
    message = _restore_refused(snap, data, r"chroma/text/00000\.npy declares 2000000000 x 384 vectors")
    assert "at most" in message


@pytest.mark.parametrize("forgery", ["recomputed digest", "no signature", "another key"])
def test_finding5_a_forged_snapshot_is_refused(small_snapshot: tuple[Path, Path], secret: Path, tmp_path: Path,
                                              forgery: str) -> None:
    snap, data = small_snapshot
    rows = (snap / "manifest" / "probes.jsonl").read_text().replace("first aid sign", "forged probe")
    (snap / "manifest" / "probes.jsonl").write_text(rows)
    if forgery == "another key":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "snapshot.key").write_text("ab" * 32)
        forge(snap, tmp_path / "elsewhere")
        match = "signed with key [0-9a-f]{16}, which this restore does not hold"
    else:
        forge(snap)  # digest and checksums recomputed; the signature is left out or stale
        if forgery == "recomputed digest":
            index = json.loads((snap / "snapshot.json").read_text())
            index["signature"] = {"algorithm": "hmac-sha256", "mac": "0" * 64,
                                  "key_id": key_id_of(data)}
            (snap / "snapshot.json").write_text(json.dumps(index))
            match = "does not match its signature"
        else:
            match = "is not signed"
    _restore_refused(snap, data, match)
    result = CliRunner().invoke(main, ["snapshot", "restore", str(snap), "--as", "copy", "--data-dir", str(data)])
    assert result.exit_code == 1 and "InvalidInputError" in result.output
    if forgery != "recomputed digest":  # a snapshot nobody held signs restores when the user says so
        done = CliRunner().invoke(main, ["snapshot", "restore", str(snap), "--as", "copy", "--data-dir", str(data),
                                         "--trust-unsigned", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["trust"] == "unsigned" and json.loads(done.stdout)["roots"] == []


def key_id_of(data: Path) -> str:
    key = bytes.fromhex((data / "snapshot.key").read_text().strip())
    return hashlib.sha256(b"mmrag-snapshot-key:" + key).hexdigest()[:16]


def test_finding5_snapshot_create_refuses_a_link_in_the_keyword_folder(small_snapshot: tuple[Path, Path],
                                                                       secret: Path, tmp_path: Path) -> None:
    _, data = small_snapshot
    kb = hashing(data)
    (kb.keyword_dir / "planted").symlink_to(secret)
    kb.close()
    with pytest.raises(StoreDamagedError, match="planted is a link or special file"):
        snapshots.create("test", tmp_path / "again", data_dir=data)
    assert not (tmp_path / "again").exists()


def test_snapshots_are_signed_with_a_0600_key_of_the_data_dir(small_snapshot: tuple[Path, Path]) -> None:
    snap, data = small_snapshot
    key = data / "snapshot.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    index = json.loads((snap / "snapshot.json").read_text())
    assert index["signature"]["key_id"] == key_id_of(data)
    assert index["signature"]["algorithm"] == "hmac-sha256" and len(index["signature"]["mac"]) == 64


# -- issue 23, finding 6: a planted source path does not turn repair or reindex into a file reader ---
def _fake_models(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """The real CLI path (settings, alias resolution, real Chroma) with the hashing fakes for the models."""
    import importlib
    from types import SimpleNamespace

    from mmrag.cli import _common

    fakes = SimpleNamespace(clip=HashingEmbedder(16), text=HashingEmbedder(8))
    monkeypatch.setattr(importlib.import_module(module), "open_kb",
                        lambda opts, name=None, chunk=None: _common.open_kb(opts, name, chunk=chunk, embedders=fakes))


def plant(snap: Path, data: Path, source: Path) -> None:
    """Add a document row whose source is any file of the victim's machine, with counts to match; sign it again."""
    row = {"doc_id": source.name, "source": str(source), "doc_type": "text", "content_hash": "planted",
           "status": "done", "reason": "", "n_clip": 0, "n_text": 1, "updated_at": 1.0}
    with open(snap / "manifest" / "documents.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    index = json.loads((snap / "snapshot.json").read_text())
    index["counts"]["documents"] += 1
    index["manifest_totals"]["n_text"] += 1
    (snap / "snapshot.json").write_text(json.dumps(index))
    forge(snap, data)


@pytest.fixture
def planted(small_snapshot: tuple[Path, Path], secret: Path) -> Path:
    """The data dir, holding ``copy``: the snapshot restored with a planted row naming ``secret``."""
    snap, data = small_snapshot
    plant(snap, data, secret)
    snapshots.restore(snap, "copy", data_dir=data)
    assert holds_secret(data) == []
    return data


def test_finding6_doctor_repair_does_not_read_a_planted_source(planted: Path, secret: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_models(monkeypatch, "mmrag.cli.doctor")
    args = ["doctor", "copy", "--repair", "--data-dir", str(planted), "--json"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 4, result.output  # a problem remains: the planted document
    done = json.loads(result.stdout)["repair"]
    assert done["reingested"] == [] and done["paths"] == []
    assert [(u["doc_id"], u["source"]) for u in done["unrepairable"]] == [("loot.txt", str(secret))]
    assert "outside the folders it was ingested from" in done["unrepairable"][0]["reason"]
    assert "--allow-source-outside-roots" in done["unrepairable"][0]["reason"]
    assert holds_secret(planted) == []

    # The flag says the operator trusts that source: then it is read.
    allowed = CliRunner().invoke(main, [*args, "--allow-source-outside-roots"], catch_exceptions=False)
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["repair"]["reingested"] == ["loot.txt"]
    assert holds_secret(planted) != []


def test_finding6_reindex_does_not_read_a_planted_source(planted: Path, secret: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_models(monkeypatch, "mmrag.cli.lifecycle")
    args = ["reindex", "copy", "--data-dir", str(planted), "--chunk-size", "64", "--chunk-overlap", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "reindex refused" in result.output, result.output
    assert str(secret) in result.output and "--allow-source-outside-roots" in result.output
    assert holds_secret(planted) == []

    allowed = CliRunner().invoke(main, [*args, "--allow-source-outside-roots", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["documents"] == 5
    assert holds_secret(planted) != []


def test_finding6_a_foreign_snapshot_trusts_only_the_source_roots_given(
        small_snapshot: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap, data = small_snapshot
    other = tmp_path / "other"
    base = ["snapshot", "restore", str(snap), "--data-dir", str(other), "--key", str(data / "snapshot.key"), "--json"]
    done = CliRunner().invoke(main, [*base, "--as", "bare"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert (out["trust"], out["roots"], out["outside_roots"]) == ("key", [], 4)  # every source is outside
    corpus = tmp_path / "corpus"
    given = CliRunner().invoke(main, [*base, "--as", "rooted", "--source-root", str(corpus)])
    assert json.loads(given.stdout)["roots"] == [str(corpus)] and json.loads(given.stdout)["outside_roots"] == 0

    _fake_models(monkeypatch, "mmrag.cli.doctor")
    for name, readable in (("bare", False), ("rooted", True)):
        kb = hashing(other, name)
        kb.client.get_collection(kb.text_name, embedding_function=None).delete(ids=["hours.txt#t0"])
        kb.close()
        result = CliRunner().invoke(main, ["doctor", name, "--repair", "--data-dir", str(other), "--json"])
        repaired = json.loads(result.stdout)["repair"]
        assert (repaired["reingested"] == ["hours.txt"]) is readable, repaired
        assert result.exit_code == (0 if readable else 4)


def test_roots_are_recorded_when_the_cli_passes_the_files_it_walked(tmp_path: Path) -> None:
    """`mmrag ingest` walks the paths itself (for its progress) and hands the files over with them:
    the paths it was given are still the knowledge base's roots."""
    from mmrag.loaders.discovery import discover

    kb = hashing(tmp_path / "data")
    corpus = make_corpus(tmp_path)
    Indexer(kb).ingest([corpus], files=list(discover([corpus])))
    assert kb.manifest.roots("test") == [str(corpus)]
    kb.close()


def test_roots_are_recorded_by_ingest_and_backfilled_in_an_older_manifest(tmp_path: Path) -> None:
    import sqlite3

    from mmrag.lifecycle.roots import allowed_roots, outside_roots
    from mmrag.manifest import Manifest

    kb = hashing(tmp_path / "data")
    corpus = make_corpus(tmp_path)
    Indexer(kb).ingest([corpus, corpus / "hours.txt"])
    assert kb.manifest.roots("test") == sorted([str(corpus), str(corpus / "hours.txt")])
    sources = [s.source for s in kb.manifest.all("test")]
    assert outside_roots(kb.manifest, "test", [*sources, "/etc/passwd", f"{corpus}/../secrets/x"]) == \
        ["/etc/passwd", f"{corpus}/../secrets/x"]
    kb.close()
    # A manifest written before roots existed (user_version 1, no rows): the migration backfills them.
    db = sqlite3.connect(tmp_path / "data" / "manifest.sqlite3")
    db.execute("DELETE FROM roots")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    manifest = Manifest(tmp_path / "data" / "manifest.sqlite3")
    assert allowed_roots(manifest, "test") == {str(corpus)}
    assert outside_roots(manifest, "test", sources) == []
    manifest.close()


def test_roots_survive_a_prune_of_the_version_that_was_ingested(tmp_path: Path) -> None:
    from mmrag.chunking import ChunkSpec
    from mmrag.lifecycle.promotion import prune
    from mmrag.lifecycle.reindex import reindex
    from mmrag.manifest import Manifest

    data = tmp_path / "data"
    corpus = make_corpus(tmp_path)
    kb = hashing(data)
    Indexer(kb).ingest([corpus])
    kb.close()

    def open_kb(name: str, chunk: ChunkSpec = ChunkSpec()) -> KnowledgeBase:
        physical = Versions(Manifest(data / "manifest.sqlite3")).resolve(name)
        return KnowledgeBase(data, physical, resolve_models(Settings()), chunk=chunk, clip=HashingEmbedder(16),
                             text=HashingEmbedder(8))

    assert reindex("test", open_kb=open_kb, chunk=ChunkSpec(64, 8), models=resolve_models(Settings())).documents == 4
    versions = Versions(Manifest(data / "manifest.sqlite3"))
    versions.switch("test", 2, reason="promote")
    assert prune("test", versions=versions, open_bare=open_kb, keep=0) == ["test@1"]  # the ingested version
    # The sources are still allowed: the third version is built from the second's rows.
    assert reindex("test", open_kb=open_kb, chunk=ChunkSpec(48, 8), models=resolve_models(Settings())).documents == 4
    assert versions.manifest.roots("test--v2") == [str(corpus)]


@pytest.mark.parametrize("bomb", ["a listed size over the cap", "a manifest row nested 100,000 deep",
                                  "snapshot.json nested 100,000 deep"])
def test_finding5_oversized_or_deeply_nested_input_is_refused_with_its_name(small_snapshot: tuple[Path, Path],
                                                                           bomb: str) -> None:
    snap, data = small_snapshot
    if bomb == "snapshot.json nested 100,000 deep":
        (snap / "snapshot.json").write_text("[" * 100_000 + "]" * 100_000)
        with pytest.raises(StoreDamagedError, match="snapshot.json cannot be read"):
            snapshots.restore(snap, "copy", data_dir=data)
        return
    if bomb == "a listed size over the cap":
        index = json.loads((snap / "snapshot.json").read_text())
        index["files"]["keyword/meta.json"]["size"] = 1 << 40  # 1 TiB, for a file of a few hundred bytes
        (snap / "snapshot.json").write_text(json.dumps(index))
        forge(snap, data, files=False)
        _restore_refused(snap, data, r"keyword/meta\.json is listed at 1099511627776 bytes, over the")
    else:
        with open(snap / "manifest" / "flags.jsonl", "a") as fh:
            fh.write("[" * 100_000 + "]" * 100_000 + "\n")
        forge(snap, data)
        _restore_refused(snap, data, r"manifest/flags\.jsonl line [0-9]+ is not a JSON row \(RecursionError\)")
