"""Indexer behaviour on real Chroma with the hashing fake embedders (fast, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmrag.indexing import Indexer
from mmrag.retrieval import Searcher
from mmrag.types import Query


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("Alpha is the first letter. It opens the alphabet.\n")
    (root / "b.md").write_text("# Beta\n\nBeta comes second in the Greek alphabet.\n")
    (root / "sub").mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), "red").save(root / "sub" / "red.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def _state(kb) -> dict:  # type: ignore[no-untyped-def]
    clip = sorted((rid, m["doc_id"]) for rid, m, _ in kb.bare_store("clip").iter_all())
    text = sorted(rid for rid, _, _ in kb.bare_store("text").iter_all())
    return {"clip": clip, "text": text, "docs": sorted((s.doc_id, s.status) for s in kb.manifest.all(kb.collection))}


def test_ingest_indexes_everything_readable_and_lists_failures(hashing_kb, tmp_path: Path) -> None:
    root = _corpus(tmp_path / "corpus")
    summary = Indexer(hashing_kb).ingest([root])
    assert summary.indexed == 3
    assert [Path(p.path).name for p in summary.failed] == ["broken.png"]
    state = _state(hashing_kb)
    assert {d for _, d in state["clip"]} == {"a.txt", "b.md", "sub/red.png"}
    assert ("sub/red.png#i0", "sub/red.png") in state["clip"]
    assert all(rid.split("#")[1].startswith("t") for rid in state["text"])
    assert hashing_kb.keyword.count() == len(state["text"])


def test_second_run_computes_no_embeddings(hashing_kb, tmp_path: Path) -> None:
    root = _corpus(tmp_path / "corpus")
    Indexer(hashing_kb).ingest([root])
    before = _state(hashing_kb)
    again = Indexer(hashing_kb).ingest([root])
    assert again.clip_embeddings == again.text_embeddings == 0
    assert again.indexed == 0 and again.unchanged == 4
    assert _state(hashing_kb) == before


def test_changed_file_replaces_its_old_chunks(hashing_kb, tmp_path: Path) -> None:
    root = _corpus(tmp_path / "corpus")
    Indexer(hashing_kb).ingest([root])
    long = " ".join(f"Alpha sentence {i} is here." for i in range(400))
    (root / "a.txt").write_text(long)
    summary = Indexer(hashing_kb).ingest([root])
    assert summary.indexed == 1
    ids = [rid for rid, d in _state(hashing_kb)["clip"] if d == "a.txt"]
    assert len(ids) > 3
    (root / "a.txt").write_text("Short again.")
    Indexer(hashing_kb).ingest([root])
    assert [rid for rid, d in _state(hashing_kb)["clip"] if d == "a.txt"] == ["a.txt#t0"]


def test_prune_and_delete_reach_all_three_indexes(hashing_kb, tmp_path: Path) -> None:
    root = _corpus(tmp_path / "corpus")
    Indexer(hashing_kb).ingest([root])
    (root / "b.md").unlink()
    assert Indexer(hashing_kb).ingest([root]).pruned == 0, "no --prune: nothing removed"
    summary = Indexer(hashing_kb).ingest([root], prune=True)
    assert summary.pruned == 1
    state = _state(hashing_kb)
    assert all(d != "b.md" for _, d in state["clip"]) and all(not r.startswith("b.md") for r in state["text"])
    assert all(h.doc_id != "b.md" for h in Searcher(hashing_kb).search(Query(text="Beta Greek"), 10, retriever="bm25"))
    assert Indexer(hashing_kb).delete(["a.txt"]) == 1
    assert Searcher(hashing_kb).search(Query(text="Alpha alphabet"), 10, retriever="bm25") == []
    assert hashing_kb.manifest.get("test", "a.txt") is None


def test_a_file_that_turns_bad_keeps_its_indexed_version(hashing_kb, tmp_path: Path) -> None:
    root = _corpus(tmp_path / "corpus")
    Indexer(hashing_kb).ingest([root])
    before = [r for r in _state(hashing_kb)["clip"] if r[1] == "sub/red.png"]
    (root / "sub" / "red.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    summary = Indexer(hashing_kb).ingest([root])
    assert any(p.path.endswith("red.png") for p in summary.failed)
    assert [r for r in _state(hashing_kb)["clip"] if r[1] == "sub/red.png"] == before
    assert Indexer(hashing_kb).ingest([root]).repaired == 0, "manifest and store agree"


def test_repair_redoes_documents_whose_records_went_missing(hashing_kb, tmp_path: Path) -> None:
    root = _corpus(tmp_path / "corpus")
    Indexer(hashing_kb).ingest([root])
    expected = _state(hashing_kb)
    hashing_kb.bare_store("clip").delete(["b.md#t0"])  # simulate a lost write
    summary = Indexer(hashing_kb).ingest([root])
    assert summary.repaired == 1 and summary.indexed == 1
    assert _state(hashing_kb) == expected


def test_jsonl_records_are_documents(hashing_kb, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    rows = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"Body text number {i}."} for i in range(5)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert Indexer(hashing_kb).ingest([corpus]).indexed == 5
    rows[2]["text"] = "Changed body."
    corpus.write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    summary = Indexer(hashing_kb).ingest([corpus], prune=True)
    assert (summary.indexed, summary.unchanged, summary.pruned) == (1, 3, 1)
    assert sorted(s.doc_id for s in hashing_kb.manifest.all("test")) == ["d0", "d1", "d2", "d3"]


def test_a_file_that_cannot_be_read_fails_alone(hashing_kb, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file that vanishes or turns unreadable between discovery and hashing is one failure, not a crash."""
    import mmrag.indexing.steps as pipeline
    from mmrag.loaders import file_sha256

    root = _corpus(tmp_path / "corpus")

    def flaky(path: Path) -> str:
        if path.name == "a.txt":
            path.unlink()
        return file_sha256(path)

    monkeypatch.setattr(pipeline, "file_sha256", flaky)
    summary = Indexer(hashing_kb).ingest([root])
    assert summary.indexed == 2
    assert sorted(Path(p.path).name for p in summary.failed) == ["a.txt", "broken.png"]


def test_store_writes_retry_transient_errors_with_doubling_waits_and_raise_the_rest() -> None:
    from mmrag.errors import StoreError
    from mmrag.indexing import STORE_RETRIES, retry_store

    class Refused(StoreError):
        transient = True

    waits: list[float] = []
    attempts: list[int] = []
    retries: list[int] = []

    def flaky(attempt: int) -> None:
        attempts.append(attempt)
        if attempt < 3:
            raise Refused("connection refused")

    retry_store("write", flaky, on_retry=lambda: retries.append(1), sleep=waits.append)
    assert attempts == [0, 1, 2, 3] and waits == [0.5, 1.0, 2.0] and len(retries) == 3

    waits.clear()
    with pytest.raises(Refused):
        retry_store("write", lambda _: (_ for _ in ()).throw(Refused("still down")), sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0] and len(waits) == STORE_RETRIES

    waits.clear()
    with pytest.raises(StoreError, match="disk"):
        retry_store("write", lambda _: (_ for _ in ()).throw(StoreError("disk full")), sleep=waits.append)
    assert waits == []
