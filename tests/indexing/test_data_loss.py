"""Issue 8's data-loss findings, each as a regression test (real Chroma, hashing embedders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmrag.indexing import Indexer
from mmrag.retrieval import Searcher
from mmrag.types import Query
from tests.conftest import SAMPLE_CORPUS


def _records(kb, doc_prefix: str = "") -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[str]] = {}
    for which in ("clip", "text"):
        out[which] = sorted(rid for rid, m, _ in kb.bare_store(which).iter_all() if m["doc_id"].startswith(doc_prefix))
    out["keyword"] = sorted(rid for rid, m, _ in kb.keyword.rows() if m["doc_id"].startswith(doc_prefix))
    return out


def _jsonl(path: Path, n: int, start: int = 0) -> None:
    path.write_text("".join(json.dumps({"_id": f"r{i}", "text": f"Record {i} talks about item {i}."}) + "\n"
                            for i in range(start, start + n)))


def test_finding1_bad_jsonl_line_then_prune_keeps_the_corpus(hashing_kb, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    _jsonl(root / "records.jsonl", 50)
    assert Indexer(hashing_kb).ingest([root]).indexed == 50
    before = _records(hashing_kb)
    with open(root / "records.jsonl", "a") as fh:
        fh.write('{"text": "no id here"\n')  # malformed (and id-less)
    summary = Indexer(hashing_kb).ingest([root], prune=True)
    assert summary.pruned == 0
    assert _records(hashing_kb) == before and len(before["text"]) == 50
    assert any(p.path.endswith("records.jsonl:51") for p in summary.failed), summary.failed


def test_finding1_unreadable_or_corrupt_source_is_not_pruned(hashing_kb, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(SAMPLE_CORPUS / "signs-catalogue.pdf", root / "catalogue.pdf")
    (root / "note.txt").write_text("A note about lanterns.\n")
    Indexer(hashing_kb).ingest([root])
    before = _records(hashing_kb)
    pdf = _records(hashing_kb, "catalogue.pdf")
    assert pdf["text"] and pdf["clip"]
    (root / "catalogue.pdf").write_bytes((root / "catalogue.pdf").read_bytes()[:300])  # truncated
    summary = Indexer(hashing_kb).ingest([root], prune=True)
    assert summary.pruned == 0 and _records(hashing_kb) == before
    (root / "note.txt").unlink()
    summary = Indexer(hashing_kb).ingest([root], prune=True)
    assert summary.pruned == 1  # only what is really gone
    assert _records(hashing_kb, "catalogue.pdf") == pdf  # nothing of the broken-but-present pdf is lost


def test_finding2_duplicate_ids_across_files_are_reported_not_written(hashing_kb, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "notes.md").write_text("# Notes\n\nThe notes file.\n")
    (root / "a.jsonl").write_text(json.dumps({"_id": "dup", "text": "First copy of dup."}) + "\n")
    (root / "b.jsonl").write_text(json.dumps({"_id": "dup", "text": "Second copy of dup."}) + "\n"
                                  + json.dumps({"_id": "notes.md", "text": "A record named like a file."}) + "\n")
    summary = Indexer(hashing_kb).ingest([root])
    reasons = " ".join(p.reason for p in summary.failed)
    assert "'dup' is already used by" in reasons and "'notes.md' is already used by" in reasons
    # Files' path ids are claimed before any JSONL record id (both engines plan files first), so
    # notes.md keeps its id although b.jsonl comes first; records are claimed in discovery order.
    assert hashing_kb.manifest.get("test", "dup").source.endswith("a.jsonl")
    assert hashing_kb.manifest.get("test", "notes.md").source.endswith("notes.md")
    hits = {h.id: h for h in hashing_kb.bare_store("text").get(["dup#t0", "notes.md#t0"])}
    assert hits["dup#t0"].text == "First copy of dup."
    assert "The notes file." in (hits["notes.md#t0"].text or "") and hits["notes.md#t0"].source.endswith("notes.md")
    before = _records(hashing_kb)
    again = Indexer(hashing_kb).ingest([root])  # every rerun: the same refusal, nothing deleted
    assert _records(hashing_kb) == before and again.indexed == 0 and len(again.failed) == 2


def test_finding3_a_second_broken_version_keeps_the_last_good_one(hashing_kb, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    good = (SAMPLE_CORPUS / "signs-catalogue.pdf").read_bytes()
    (root / "cat.pdf").write_bytes(good)
    Indexer(hashing_kb).ingest([root])
    before = _records(hashing_kb)
    state = hashing_kb.manifest.get("test", "cat.pdf")
    for cut in (len(good) // 3, len(good) // 2):  # two different broken versions in a row
        (root / "cat.pdf").write_bytes(good[:cut])
        summary = Indexer(hashing_kb).ingest([root])
        assert summary.failed and "kept" in summary.failed[0].reason
    rerun = Indexer(hashing_kb).ingest([root])
    assert rerun.repaired == 0 and rerun.indexed == 0
    assert _records(hashing_kb) == before
    kept = hashing_kb.manifest.get("test", "cat.pdf")
    assert (kept.status, kept.n_clip, kept.n_text) == ("failed", state.n_clip, state.n_text)


def test_finding4_same_doc_id_from_another_folder_does_not_replace(hashing_kb, tmp_path: Path) -> None:
    for name, text in (("docs1", "The first index page."), ("docs2", "The second index page.")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.md").write_text(text + "\n")
    Indexer(hashing_kb).ingest([tmp_path / "docs1"])
    summary = Indexer(hashing_kb).ingest([tmp_path / "docs2"])
    assert summary.indexed == 0 and "already used by" in summary.failed[0].reason
    assert str(tmp_path / "docs1" / "index.md") in summary.failed[0].reason
    assert hashing_kb.bare_store("text").get(["index.md#t0"])[0].text == "The first index page."
    # A moved folder (the old source is gone) is an update, not a collision.
    shutil.rmtree(tmp_path / "docs1")
    assert Indexer(hashing_kb).ingest([tmp_path / "docs2"]).indexed == 1
    assert hashing_kb.bare_store("text").get(["index.md#t0"])[0].text == "The second index page."


def test_bm25_sees_each_batch_during_a_long_ingest(hashing_kb, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Documents marked done are keyword-searchable before the run ends (no end-of-run rebuild)."""
    from mmrag.indexing import engines, writer

    monkeypatch.setattr(engines, "FLUSH_ITEMS", 4)  # the engine's embedding batches
    monkeypatch.setattr(writer, "WRITE_ITEMS", 4)  # and the writer's write batches
    monkeypatch.setattr(writer, "BATCH_SLICES", 1)  # of one slice each
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"f{i:02d}.txt").write_text(f"Lantern number {i} burns.\n")
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if done == 9:
            found = Searcher(hashing_kb).search(Query(text="lantern"), 20, retriever="bm25")
            seen.append((hashing_kb.manifest.counts("test").get("done", 0), len(found)))

    Indexer(hashing_kb).ingest([root], progress=progress)
    (n_done, n_found), = seen
    assert n_done >= 8 and n_found == n_done
