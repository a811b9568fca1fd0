"""``mmrag doctor`` (issue 12): each inconsistency is found, and ``--repair`` fixes what it can.

Damage is done the way it happens outside mmrag: straight through chromadb and the keyword index.
The fast tests use real Chroma with the hashing fakes; one slow test runs the CLI with the offline models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.cli.doctor import EXIT_PROBLEMS
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.doctor import examine, repair
from mmrag.lifecycle.probes import Probe, ProbeStore
from mmrag.manifest import DocState
from mmrag.registry import resolve_models
from mmrag.types import Record

LONG = " ".join(f"Sentence {i} about the harbour crane and its yearly inspection." for i in range(60))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# Alpaca\n\nAlpaca wool blankets are woven by hand in the highlands.\n")
    (root / "b.txt").write_text("Basalt columns form when thick lava cools slowly and cracks.\n")
    (root / "sub" / "crane.md").write_text(f"# Crane\n\n{LONG}\n")  # several chunks
    return root


@pytest.fixture
def kb(hashing_kb: KnowledgeBase, corpus: Path) -> KnowledgeBase:
    summary = Indexer(hashing_kb).ingest([corpus])
    assert summary.indexed == 3 and not summary.failed
    return hashing_kb


def _collection(kb: KnowledgeBase, name: str) -> Any:
    return kb.client.get_collection(name, embedding_function=None)


def _state(kb: KnowledgeBase) -> dict[str, Any]:
    return {"clip": sorted(r for r, _, _ in kb.bare_store("clip").iter_all()),
            "text": sorted(r for r, _, _ in kb.bare_store("text").iter_all()),
            "keyword": kb.keyword.doc_counts()}


def _kinds(report: Any) -> dict[str, Any]:
    return {(f.kind, f.where): f for f in report.findings}


def _repaired_clean(kb: KnowledgeBase, expected: dict[str, Any] | None = None) -> Any:
    done = repair(kb, examine(kb))
    assert done.after is not None and done.after.healthy, done.after.findings if done.after else None
    assert examine(kb).healthy
    if expected is not None:
        assert _state(kb) == expected
    return done


def test_an_undamaged_kb_is_healthy(kb: KnowledgeBase) -> None:
    report = examine(kb)
    assert report.healthy and report.findings == []
    assert report.label == "test@1"
    n_clip, n_text = report.counts["expected"]["clip"], report.counts["expected"]["text"]
    assert n_text > 3, "the long file makes several chunks"
    assert report.counts["stores"] == {"test-clip": n_clip, "test-image": 0, "test-text": n_text, "keyword": n_text}


def test_records_missing_from_chroma_are_found_and_reingested(kb: KnowledgeBase) -> None:
    expected = _state(kb)
    crane = [r for r in expected["text"] if r.startswith("sub/crane.md#")]
    _collection(kb, kb.text_name).delete(ids=crane[:2])
    _collection(kb, kb.clip_name).delete(ids=["a.md#t0"])
    assert kb.health().problems, "the totals show it too"

    report = examine(kb)
    found = _kinds(report)
    text = found[("missing_records", "test-text")]
    assert text.count == 1 and text.repairable and text.examples[0].startswith("sub/crane.md (")
    clip = found[("missing_records", "test-clip + test-image")]
    assert clip.examples == ("a.md (0 of 1)",)
    assert ("count_mismatch", "test-text") in found
    assert ("stale_keyword", "keyword") not in found, "a document being redone is not reported twice"

    done = _repaired_clean(kb, expected)
    assert sorted(done.reingested) == ["a.md", "sub/crane.md"]
    assert done.ingest is not None and done.ingest["indexed"] == 2
    assert kb.manifest.get("test", "sub/crane.md").status == "done"  # type: ignore[union-attr]


def test_orphan_records_are_found_and_deleted(kb: KnowledgeBase) -> None:
    expected = _state(kb)
    meta = {"doc_id": "ghost.md", "source": "/nowhere/ghost.md", "modality": "text"}
    _collection(kb, kb.text_name).add(ids=["ghost.md#t0"], embeddings=[[0.5] * 8], metadatas=[meta], documents=["boo"])
    _collection(kb, kb.clip_name).add(ids=["ghost.md#t0"], embeddings=[[0.5] * 16], metadatas=[meta], documents=["boo"])
    _collection(kb, kb.image_name).add(ids=["nodoc#i0"], embeddings=[[0.5] * 16], metadatas=[{"modality": "image"}])

    found = _kinds(examine(kb))
    assert found[("orphan_records", "test-text")].examples == ("ghost.md#t0",)
    assert found[("orphan_records", "test-clip")].count == 1
    assert found[("orphan_records", "test-image")].examples == ("nodoc#i0",), "a record with no doc_id"

    done = _repaired_clean(kb, expected)
    assert done.orphans_deleted == 1 and done.reingested == []


def test_damage_that_keeps_every_count_is_still_found(kb: KnowledgeBase) -> None:
    """One record lost and an orphan left behind: the totals agree, so only the scan sees it."""
    expected = _state(kb)
    text = _collection(kb, kb.text_name)
    text.delete(ids=["b.txt#t0"])
    text.add(ids=["ghost#t0"], embeddings=[[0.5] * 8], metadatas=[{"doc_id": "ghost"}], documents=["boo"])
    kb.keyword.write(delete_docs=["b.txt"], records=[Record("ghost#t0", (), {"doc_id": "ghost"}, "boo")])
    assert kb.health().problems == [], "check_health compares counts only"

    found = _kinds(examine(kb))
    assert {k for k, _ in found} == {"missing_records", "orphan_records", "stale_keyword"}
    _repaired_clean(kb, expected)


def test_a_stale_keyword_index_is_found_and_rewritten(kb: KnowledgeBase) -> None:
    expected = _state(kb)
    kb.keyword.delete_docs(["b.txt"])
    kb.keyword.write(records=[Record("zz#t0", (), {"doc_id": "zz", "source": "/x/zz.txt"}, "a row Chroma lacks"),
                              Record("a.md#t9", (), {"doc_id": "a.md", "source": "/x/a.md"}, "one row too many")])

    stale = _kinds(examine(kb))[("stale_keyword", "keyword")]
    assert stale.count == 3 and stale.repairable
    assert set(stale.examples) == {"a.md (2 rows vs 1)", "b.txt (0 rows vs 1)", "zz (1 rows vs 0)"}

    done = _repaired_clean(kb, expected)
    assert done.keyword_rewritten == 3 and done.reingested == [], "rewritten from the text collection, no embedding"


def test_an_unreadable_keyword_index_is_rebuilt(kb: KnowledgeBase) -> None:
    expected = _state(kb)
    (kb.keyword_dir / "meta.json").write_text("{ not json")
    stale = _kinds(examine(kb))[("stale_keyword", "keyword")]
    assert "cannot be read" in stale.message and stale.repairable
    done = _repaired_clean(kb, expected)
    assert done.keyword_rebuilt == len(expected["text"])


def test_an_identity_mismatch_is_found_and_not_repaired(kb: KnowledgeBase, tmp_path: Path) -> None:
    kb.close()
    other = KnowledgeBase(kb.data_dir, "test", resolve_models(Settings()), clip=HashingEmbedder(32),
                          text=HashingEmbedder(8))
    _collection(other, other.text_name).delete(ids=["b.txt#t0"])
    report = examine(other)
    found = _kinds(report)
    mismatch = found[("identity_mismatch", "test-clip")]
    assert not mismatch.repairable and "dim: built with 16, configured 32" in mismatch.message
    assert "mmrag reindex test" in mismatch.fix
    assert ("identity_mismatch", "test-text") not in found, "the text model is the one it was built with"

    done = repair(other, report)
    assert done.reingested == [] and [u["doc_id"] for u in done.unrepairable] == ["b.txt"]
    assert done.after is not None and not done.after.healthy
    assert {f.kind for f in done.after.findings} >= {"identity_mismatch", "missing_records"}


def test_a_document_whose_source_is_gone_is_unrepairable(kb: KnowledgeBase, corpus: Path) -> None:
    _collection(kb, kb.text_name).delete(ids=["b.txt#t0"])
    (corpus / "b.txt").unlink()
    done = repair(kb, examine(kb))
    [gone] = done.unrepairable
    assert (gone["doc_id"], gone["source"]) == ("b.txt", str(corpus / "b.txt")) and "no longer exists" in gone["reason"]
    assert done.after is not None and ("missing_records", "test-text") in _kinds(done.after)


def test_pending_documents_are_reported_and_redone(kb: KnowledgeBase) -> None:
    expected = _state(kb)
    s = kb.manifest.get("test", "a.md")
    assert s is not None
    kb.manifest.set_states("test", [DocState(s.doc_id, s.source, s.doc_type, "", "pending", "", 0, 0)])
    found = _kinds(examine(kb))
    assert set(found) == {("pending", "manifest"), ("count_mismatch", "test-clip + test-image"),
                          ("count_mismatch", "test-text"), ("count_mismatch", "keyword")}, "its records are no orphans"
    assert _repaired_clean(kb, expected).reingested == ["a.md"]


def test_failing_probes_are_reported(kb: KnowledgeBase) -> None:
    store = ProbeStore(kb.manifest)
    store.add("test", Probe("wool", "alpaca wool blankets", ("a.md",), 3))
    assert examine(kb).healthy
    store.add("test", Probe("ghost", "basalt lava", ("gone.md",), 3))
    failing = _kinds(examine(kb))[("probe_failing", "probes")]
    assert failing.count == 1 and not failing.repairable and failing.examples == ("ghost (missing gone.md)",)


def test_cli_exit_codes(kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmrag.cli.doctor as cli

    monkeypatch.setattr(cli, "open_kb", lambda opts, name=None: kb)  # the hashing fakes instead of real models
    runner = CliRunner()
    result = runner.invoke(main, ["doctor", "test"], catch_exceptions=False)
    assert result.exit_code == 0 and "healthy" in result.stdout

    _collection(kb, kb.text_name).delete(ids=["b.txt#t0"])
    result = runner.invoke(main, ["doctor", "test", "--json"], catch_exceptions=False)
    assert result.exit_code == EXIT_PROBLEMS == 4
    assert {f["kind"] for f in json.loads(result.stdout)["findings"]} == {"missing_records", "count_mismatch"}

    result = runner.invoke(main, ["doctor", "--repair"], catch_exceptions=False)
    assert result.exit_code == 0, result.stdout
    assert "PROBLEM missing_records" in result.stdout and "re-ingested 1 document(s)" in result.stdout
    assert runner.invoke(main, ["doctor", "test@1"]).exit_code == 0

    result = runner.invoke(main, ["doctor", "test", "--collection", "other"])
    assert result.exit_code == 2 and "disagree" in result.output


@pytest.mark.slow
@pytest.mark.long  # 26 s: models loaded for a doctor run; the in-process doctor tests above cover its checks
def test_cli_with_the_offline_models(corpus: Path, tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--profile", "offline"], catch_exceptions=False)
        return result.exit_code, result.stdout

    assert run("ingest", str(corpus), "--json")[0] == 0
    kb = KnowledgeBase(tmp_path / "data", "default", resolve_models(Settings(profile="offline")))
    _collection(kb, kb.text_name).delete(ids=["a.md#t0"])
    kb.keyword.delete_docs(["b.txt"])
    code, out = run("doctor", "--json")
    assert code == EXIT_PROBLEMS
    assert {f["kind"] for f in json.loads(out)["findings"]} == {"missing_records", "stale_keyword", "count_mismatch"}
    code, out = run("doctor", "--repair", "--json")
    assert code == 0 and json.loads(out)["repair"]["after"]["healthy"] is True
