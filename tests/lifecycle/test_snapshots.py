"""Snapshots: a consistent, checksummed copy of a knowledge base version, and its restore.

Acceptance (issue 12): snapshot, delete the data dir, restore: the ids, vectors, metadata, keyword
results and evaluation figures are all the same; a corrupted snapshot is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
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
        for batch in ChromaStore(kb.client, name, None).iter_batches(2):  # small pages: paging is exercised
            for i, rid in enumerate(batch.ids):
                records[rid] = (batch.metadatas[i], batch.documents[i])
                vectors[rid] = batch.vectors[i]
        out[role] = records
        out[role + " vectors"] = vectors
        out[role + " identity"] = ChromaStore(kb.client, name, None).identity
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


def hashing(data_dir: Path, name: str = "test", store_url: str | None = None) -> KnowledgeBase:
    return KnowledgeBase(data_dir, name, resolve_models(Settings()), store_url=store_url, clip=HashingEmbedder(16),
                         text=HashingEmbedder(8))


@pytest.fixture
def small_snapshot(tmp_path: Path) -> tuple[Path, Path]:
    """A hashing-fake knowledge base ingested and snapshotted in batches of 2: (snapshot, data dir)."""
    kb = hashing(tmp_path / "data")
    assert not Indexer(kb).ingest([make_corpus(tmp_path)]).failed
    add_lifecycle_rows(kb)
    kb.close()
    info = snapshots.create("test", tmp_path / "snap", data_dir=tmp_path / "data", batch=2)
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


def test_restore_under_a_new_name_in_an_empty_data_dir(small_snapshot: tuple[Path, Path], tmp_path: Path) -> None:
    snap, data = small_snapshot
    source = hashing(data)
    before = state(source)
    source.close()
    listing = json.loads((snap / "snapshot.json").read_text())
    assert listing["source"] == {**listing["source"], "kb": "test", "label": "test@1", "physical": "test"}
    assert len(listing["collections"]["text"]["batches"]) >= 2  # batches of 2 records
    assert all(len(f["sha256"]) == 64 for f in listing["files"].values())

    info = snapshots.restore(snap, "copy", data_dir=tmp_path / "other", key_file=data / "snapshot.key")
    assert (info.trust, info.roots) == ("key", [])  # another data dir's folders are not trusted
    assert info.counts == listing["counts"]
    copy = hashing(tmp_path / "other", "copy")
    assert_same(state(copy), before)
    assert Searcher(copy).search(Query(text="visitor parking"), 1, retriever="hybrid")[0].doc_id == "visitors.md"
    # A restored knowledge base is an ordinary one: version 1 of its own name.
    assert Versions(copy.manifest).resolve("copy") == "copy"
    copy.close()


def test_a_version_label_is_snapshotted_and_an_existing_name_or_out_is_refused(
        small_snapshot: tuple[Path, Path], tmp_path: Path) -> None:
    snap, data = small_snapshot
    kb = hashing(data)
    Versions(kb.manifest).adopt("test")
    kb.close()
    info = snapshots.create("test@1", tmp_path / "labelled", data_dir=data)
    assert (info.label, info.physical) == ("test@1", "test")
    with pytest.raises(InvalidInputError, match="not empty"):
        snapshots.create("test", snap, data_dir=data)
    with pytest.raises(InvalidInputError, match="already exists"):
        snapshots.restore(snap, "test", data_dir=data)
    with pytest.raises(InvalidInputError, match="version label"):
        snapshots.restore(snap, "test@2", data_dir=tmp_path / "fresh")


@pytest.mark.parametrize("damage", ["flip a vector byte", "delete a file", "edit snapshot.json"])
def test_a_corrupted_snapshot_is_refused_and_nothing_is_created(small_snapshot: tuple[Path, Path],
                                                                tmp_path: Path, damage: str) -> None:
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
        snapshots.restore(snap, "copy", data_dir=target, key_file=data / "snapshot.key")
    assert "Nothing was restored" in str(caught.value)
    assert not target.exists()  # refused before anything was opened or created
    result = CliRunner().invoke(main, ["snapshot", "restore", str(snap), "--as", "copy", "--data-dir", str(target),
                                       "--key", str(data / "snapshot.key")])
    assert result.exit_code == 1 and "StoreDamagedError" in result.output and "damaged" in result.output


def test_a_restore_that_fails_part_way_removes_what_it_created(small_snapshot: tuple[Path, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    snap, data = small_snapshot
    key = data / "snapshot.key"
    real = ChromaStore.upsert_batch
    calls = []

    def failing(self: ChromaStore, batch: Any) -> None:
        calls.append(self.name)
        if self.name.endswith("-text") and calls.count(self.name) == 2:
            raise StoreError("Chroma failed to write to 'copy-text': disk full (injected)")
        real(self, batch)

    monkeypatch.setattr(ChromaStore, "upsert_batch", failing)
    target = tmp_path / "target"
    with pytest.raises(StoreError, match="injected"):
        snapshots.restore(snap, "copy", data_dir=target, key_file=key)
    monkeypatch.undo()
    kb = hashing(target, "copy")
    assert not collection_names(kb.client) & {kb.clip_name, kb.image_name, kb.text_name}
    assert not kb.keyword_dir.exists() and not kb.manifest.has_collection("copy")
    assert kb.manifest.read("SELECT * FROM flags WHERE collection='copy'") == []
    assert kb.manifest.read("SELECT * FROM probes WHERE kb='copy'") == []
    kb.close()
    # The same name restores cleanly afterwards.
    assert snapshots.restore(snap, "copy", data_dir=target, key_file=key).counts["documents"] == 4


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
