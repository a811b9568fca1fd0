"""Versioned collections behind an alias: reindex, promote, rollback, prune (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mmrag.chunking import ChunkSpec
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.kb import KnowledgeBase
from mmrag.lifecycle.promotion import prune
from mmrag.lifecycle.reindex import reindex
from mmrag.lifecycle.versions import Versions, physical_name, split_label
from mmrag.manifest import Manifest
from mmrag.registry import resolve_models
from tests.conftest import SAMPLE_CORPUS, free_port, wait_http

WORDS = "harbor lighthouse museum ticket bridge river engine opening weekday garden tower market".split()


def _corpus(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(300)]
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n" + " ".join(words) + ".\n")
    return folder


def _opener(data_dir: Path) -> Any:
    models = resolve_models(Settings())

    def open_kb(name: str, chunk: ChunkSpec = ChunkSpec()) -> KnowledgeBase:
        physical = Versions(Manifest(data_dir / "manifest.sqlite3")).resolve(name)
        return KnowledgeBase(data_dir, physical, models, chunk=chunk, clip=HashingEmbedder(16), text=HashingEmbedder(8))

    return open_kb


def _ingest(data_dir: Path, corpus: Path, name: str = "kb") -> None:
    from mmrag.indexing import Indexer

    kb = _opener(data_dir)(name)
    Indexer(kb).ingest([corpus])
    kb.close()


def _text_ids(kb: KnowledgeBase) -> list[str]:
    return [rid for rid, _, _ in kb.bare_store("text").iter_all()]


def test_names_and_labels() -> None:
    assert split_label("kb@3") == ("kb", 3) and split_label("kb") == ("kb", None)
    assert physical_name("kb", 1) == "kb" and physical_name("kb", 2) == "kb--v2"


def test_reindex_builds_a_new_version_beside_the_live_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus"))
    open_kb = _opener(data_dir)
    live_before = _text_ids(open_kb("kb"))

    result = reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))

    assert result.version.label == "kb@2" and result.version.state == "ready" and result.source == "kb@1"
    assert result.documents == 4 and not result.failed and not result.missing
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    assert versions.resolve("kb") == "kb" and versions.resolve("kb@2") == "kb--v2"  # not live until promoted
    v1, v2 = open_kb("kb@1"), open_kb("kb@2")
    assert _text_ids(v1) == live_before  # the live version was not touched
    # The same documents, cut smaller: more chunks, no duplicates, and the manifest accounts for each.
    assert {s.doc_id for s in v2.manifest.all("kb--v2")} == {s.doc_id for s in v1.manifest.all("kb")}
    ids = _text_ids(v2)
    assert len(ids) == len(set(ids)) > len(live_before)
    assert v2.health().problems == [] and v2.manifest.totals("kb--v2")[1] == len(ids)
    assert v2.keyword.count() == len(ids)
    assert result.version.settings["chunk_size"] == 32 and result.version.settings["clip"]

    versions.switch("kb", 2, reason="promote")
    assert versions.resolve("kb") == "kb--v2" and versions.previous("kb") == 1
    versions.rollback("kb")
    assert versions.resolve("kb") == "kb"
    with pytest.raises(InvalidInputError, match="no earlier live version"):
        versions.rollback("kb")
    assert [e["kind"] for e in versions.events("kb")] == ["rollback", "promote"]


def test_reindex_catches_up_with_writes_and_resumes_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrag.indexing import Indexer

    data_dir = tmp_path / "data"
    corpus = _corpus(tmp_path / "corpus")
    _ingest(data_dir, corpus)
    open_kb = _opener(data_dir)
    real = Indexer.ingest
    calls: list[int] = []

    def crash_on_catch_up(self: Indexer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between the main build and the catch-up
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Indexer, "ingest", crash_on_catch_up)
    with pytest.raises(KeyboardInterrupt):
        reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    monkeypatch.setattr(Indexer, "ingest", real)
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    assert versions.get("kb", 2).state == "building"
    with pytest.raises(InvalidInputError, match=r"kb@2 is building, not ready.*it resumes"):
        versions.switch("kb", 2, reason="promote")  # a half-built version is never served

    # Meanwhile the live version changes: one document edited, one added, one deleted.
    (corpus / "doc0.md").write_text("# Doc 0\n\nentirely new text about a windmill.\n")
    (corpus / "doc9.md").write_text("# Doc 9\n\na late arrival about a windmill.\n")
    live = open_kb("kb")
    Indexer(live).ingest([corpus])
    Indexer(live).delete(["doc3.md"])
    (corpus / "doc3.md").unlink()
    live.close()

    result = reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    assert result.resumed and result.version.label == "kb@2" and result.version.state == "ready"
    v2 = open_kb("kb@2")
    assert {s.doc_id for s in v2.manifest.all("kb--v2")} == {"doc0.md", "doc1.md", "doc2.md", "doc9.md"}
    assert v2.keyword.query("windmill", 5) and v2.health().problems == []


def test_reindex_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    open_kb = _opener(tmp_path / "data")
    with pytest.raises(NotFoundError, match="no knowledge base 'nothing'"):
        reindex("nothing", open_kb=open_kb, chunk=ChunkSpec(), models=resolve_models(Settings()))
    with pytest.raises(InvalidInputError, match="not a version"):
        reindex("kb@2", open_kb=open_kb, chunk=ChunkSpec(), models=resolve_models(Settings()))


def test_prune_keeps_the_live_version_and_the_rollback_target(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus", 2))
    open_kb = _opener(data_dir)
    for size in (32, 48, 64):
        reindex("kb", open_kb=open_kb, chunk=ChunkSpec(size, 8), models=resolve_models(Settings()))
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    versions.switch("kb", 4, reason="promote")
    # The kept version is the one a rollback goes to (kb@1, from the alias history), not the newest other.
    assert prune("kb", versions=versions, open_bare=open_kb, keep=1) == ["kb@2", "kb@3"]
    assert [v.label for v in versions.list("kb")] == ["kb@1", "kb@4"] and versions.previous("kb") == 1
    assert not open_kb("kb").manifest.has_collection("kb--v2")  # its rows went with it
    assert open_kb("kb--v2").bare_store("text").count() == 0
    assert prune("kb", versions=versions, open_bare=open_kb, keep=0) == ["kb@1"]
    assert versions.resolve("kb") == "kb--v4" and versions.history("kb") == [4]
    # Version 1's collection is named like the knowledge base: pruning it must not touch the live one.
    assert not versions.manifest.has_collection("kb")
    assert open_kb("kb@4").bare_store("text").count() > 0 and open_kb("kb@4").health().problems == []
    # A pruned number is never given again (a server may hold its collections open).
    reindex("kb", open_kb=open_kb, chunk=ChunkSpec(40, 8), models=resolve_models(Settings()))
    assert [v.label for v in versions.list("kb")] == ["kb@4", "kb@5"]


def test_prune_leaves_no_version_twice_in_a_row_in_the_alias_history(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus", 2))
    open_kb = _opener(data_dir)
    reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    reindex("kb", open_kb=open_kb, chunk=ChunkSpec(48, 8), models=resolve_models(Settings()))
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    for number in (2, 3, 2):
        versions.switch("kb", number, reason="promote")
    assert versions.history("kb") == [1, 2, 3, 2]
    versions.switch("kb", 3, reason="promote")
    versions.switch("kb", 2, reason="promote")
    # [1, 2, 3, 2, 3, 2]: kb@3 is named twice but counts once, so --keep 1 keeps it and drops only kb@1.
    assert prune("kb", versions=versions, open_bare=open_kb, keep=1) == ["kb@1"]
    assert versions.history("kb") == [2, 3, 2, 3, 2]
    assert prune("kb", versions=versions, open_bare=open_kb, keep=0) == ["kb@3"]
    assert versions.history("kb") == [2]  # not [2, 2, 2]: a rollback to the version already live means nothing
    with pytest.raises(InvalidInputError, match="no earlier live version"):
        versions.rollback("kb")


def test_a_live_version_is_never_forgotten(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus", 2))
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    versions.adopt("kb")
    with pytest.raises(InvalidInputError, match="kb@1 is live"):
        versions.forget("kb", 1)
    assert versions.resolve("kb") == "kb" and versions.history("kb") == [1]


# -- acceptance 1: a server keeps answering through reindex, promote and rollback -------------------
def _mmrag(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmrag", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.long  # 50 s on CI; tests/lifecycle/test_lifecycle_races.py keeps an HTTP race in make test
def test_server_answers_throughout_reindex_promote_and_rollback(tmp_path: Path, chroma_server: str) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    # Two processes share the 2 cores here: one torch thread each, or they slow each other many times over.
    env.update(MMRAG_DATA_DIR=str(data_dir), MMRAG_PROFILE="offline", MMRAG_STORE__URL=chroma_server,
               MMRAG_COLLECTION="kb", MMRAG_API__AUTH="false", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = _mmrag("ingest", str(SAMPLE_CORPUS), env=env)
    assert done.returncode == 0, done.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "mmrag", "serve", "--port", str(port)], env=env,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def query() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                # Stamped when the request starts: the alias is read per request, so a search started
                # after a switch returned must answer from the new version, however slow it runs.
                started = time.monotonic()
                r = client.post(f"{url}/v1/search", json={"query": "When does the building close?", "k": 3,
                                                          "retriever": "hybrid"})
                seen.append((started, r.status_code, r.json().get("version") if r.status_code == 200 else r.text))
                time.sleep(0.05)

    try:
        wait_http(f"{url}/readyz", 180, server)
        worker = threading.Thread(target=query, daemon=True)
        worker.start()
        built = _mmrag("reindex", "kb", "--chunk-size", "48", "--json", env=env)
        assert built.returncode == 0, built.stderr
        assert json.loads(built.stdout)["version"]["label"] == "kb@2"
        during = list(seen)
        probe = _mmrag("probes", "add", "kb", "--query", "When does the building close on weekdays?",
                       "--expect", "visitor-faq.html", "--k", "5", env=env)
        assert probe.returncode == 0, probe.stderr
        promoted = _mmrag("promote", "kb", "2", env=env)
        assert promoted.returncode == 0, promoted.stderr + promoted.stdout
        assert "canary gate: passed" in promoted.stdout, promoted.stdout
        t_promote = time.monotonic()
        time.sleep(1.5)
        t_rollback_starts = time.monotonic()
        rolled = _mmrag("rollback", "kb", env=env)
        assert rolled.returncode == 0, rolled.stderr
        t_rollback = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
    errors = [s for s in seen if s[1] != 200]
    assert not errors, (errors[:3], log.read_text()[-3000:])
    assert len(during) >= 5 and {v for _, _, v in during} == {"kb@1"}
    after_promote = {v for t, _, v in seen if t_promote < t < t_rollback_starts}
    after_rollback = {v for t, _, v in seen if t > t_rollback}
    assert after_promote == {"kb@2"} and after_rollback == {"kb@1"}, (after_promote, after_rollback)

    # Nothing lost or duplicated: the same documents in both versions, and each version's records
    # are exactly what its manifest accounts for.
    listed = _mmrag("versions", "kb", "--json", env=env)
    rows = {r["label"]: r for r in json.loads(listed.stdout)["versions"]}
    assert rows["kb@1"]["live"] and rows["kb@1"]["records"]["documents"] == rows["kb@2"]["records"]["documents"] > 0
    for label in ("kb@1", "kb@2"):
        status = _mmrag("status", "--collection", label, "--json", env=env)
        assert status.returncode == 0, status.stdout  # exit 3 when the stores disagree with the manifest
        assert json.loads(status.stdout)["problems"] == []
    assert rows["kb@2"]["records"]["text"] > rows["kb@1"]["records"]["text"]  # cut smaller


def test_promote_is_gated_by_the_canary_and_force_is_logged(tmp_path: Path) -> None:
    from mmrag.errors import CanaryRefusedError
    from mmrag.indexing import Indexer
    from mmrag.lifecycle.probes import Probe, ProbeStore
    from mmrag.lifecycle.promotion import promote

    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus"))
    open_kb = _opener(data_dir)
    for _ in range(2):
        reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    Indexer(open_kb("kb@3")).delete(["doc1.md"])  # a deliberately degraded candidate: it lost a document
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    store = ProbeStore(versions.manifest)
    store.add("kb", Probe("doc-one", "Doc 1 harbor lighthouse", ("doc1.md",), k=4))
    store.add("kb", Probe("doc-two", "Doc 2 museum", ("doc2.md",), k=4))
    settings = Settings()

    with pytest.raises(CanaryRefusedError, match="probe doc-one FAILS on kb@3: missing doc1.md") as refused:
        promote("kb", 3, versions=versions, open_kb=open_kb, settings=settings)
    assert "doc-two FAILS" not in str(refused.value) and "probe_recall" in str(refused.value)
    assert versions.resolve("kb") == "kb"  # refused: nothing switched
    assert versions.events("kb")[0]["kind"] == "promote-refused"

    ok = promote("kb", 2, versions=versions, open_kb=open_kb, settings=settings)
    assert ok.live.label == "kb@2" and ok.canary.passed and not ok.forced
    forced = promote("kb", 3, versions=versions, open_kb=open_kb, settings=settings, force=True)
    assert forced.forced and versions.resolve("kb") == "kb--v3"
    assert versions.events("kb")[0]["kind"] == "promote-forced"
    assert versions.get("kb", 3).figures["canary"]["passed"] is False


def test_promote_refuses_a_version_these_models_cannot_serve(tmp_path: Path) -> None:
    from mmrag.errors import EmbedderMismatchError
    from mmrag.lifecycle.promotion import promote

    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus", 2))
    models = resolve_models(Settings())

    def other_models(name: str, chunk: ChunkSpec = ChunkSpec()) -> KnowledgeBase:  # "reindex --clip-model ..."
        physical = Versions(Manifest(data_dir / "manifest.sqlite3")).resolve(name)
        return KnowledgeBase(data_dir, physical, models, chunk=chunk, clip=HashingEmbedder(12), text=HashingEmbedder(8))

    reindex("kb", open_kb=other_models, chunk=ChunkSpec(), models=models)
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    with pytest.raises(EmbedderMismatchError, match="kb@2 cannot be served with these models"):
        promote("kb", 2, versions=versions, open_kb=_opener(data_dir), settings=Settings())
    assert versions.resolve("kb") == "kb"
    assert promote("kb", 2, versions=versions, open_kb=other_models, settings=Settings()).live.label == "kb@2"


def test_reset_deletes_every_version_and_the_alias(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mmrag.cli import main

    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus", 2))
    open_kb = _opener(data_dir)
    reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    versions.switch("kb", 2, reason="promote")
    args = ["reset", "--yes", "--data-dir", str(data_dir), "--json"]

    refused = CliRunner().invoke(main, [*args, "--collection", "kb@1"])
    assert refused.exit_code == 1 and "mmrag versions prune kb" in refused.output
    done = CliRunner().invoke(main, [*args, "--collection", "kb"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"reset": "kb", "versions": ["kb", "kb--v2"]}
    # Before, reset dropped only the live version and left the alias pointing at nothing.
    assert versions.list("kb") == [] and versions.resolve("kb") == "kb"
    assert versions.manifest.collections() == []
    assert open_kb("kb--v2").bare_store("text").count() == 0 and open_kb("kb").bare_store("text").count() == 0


def test_promoting_back_to_version_one_canaries_version_one(tmp_path: Path) -> None:
    from mmrag.errors import CanaryRefusedError
    from mmrag.indexing import Indexer
    from mmrag.lifecycle.probes import Probe, ProbeStore
    from mmrag.lifecycle.promotion import promote

    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus"))
    open_kb = _opener(data_dir)
    reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    versions.switch("kb", 2, reason="promote")
    Indexer(open_kb("kb@1")).delete(["doc1.md"])  # the old version, whose collection is named "kb", degraded
    ProbeStore(versions.manifest).add("kb", Probe("doc-one", "Doc 1 harbor lighthouse", ("doc1.md",), k=4))
    with pytest.raises(CanaryRefusedError, match="probe doc-one FAILS on kb@1"):
        promote("kb", 1, versions=versions, open_kb=open_kb, settings=Settings())
    assert versions.resolve("kb") == "kb--v2"


def test_probes_run_on_version_one_measures_version_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import mmrag.cli.probes as probes_cli
    from mmrag.cli import main
    from mmrag.indexing import Indexer
    from mmrag.lifecycle.probes import Probe, ProbeStore

    data_dir = tmp_path / "data"
    _ingest(data_dir, _corpus(tmp_path / "corpus"))
    open_kb = _opener(data_dir)
    reindex("kb", open_kb=open_kb, chunk=ChunkSpec(32, 8), models=resolve_models(Settings()))
    versions = Versions(Manifest(data_dir / "manifest.sqlite3"))
    versions.switch("kb", 2, reason="promote")
    Indexer(open_kb("kb@1")).delete(["doc1.md"])
    ProbeStore(versions.manifest).add("kb", Probe("doc-one", "Doc 1 harbor lighthouse", ("doc1.md",), k=4))
    # The CLI's own opener, with the hashing models in place of the configured ones.
    monkeypatch.setattr(probes_cli, "open_kb", lambda opts, name=None, **_: open_kb(name or opts["collection"]))
    args = ["probes", "run", "kb", "--data-dir", str(data_dir), "--json"]
    live = CliRunner().invoke(main, args)
    old = CliRunner().invoke(main, [*args, "--version", "1"])
    assert live.exit_code == 0 and json.loads(live.stdout)["version"] == "kb@2"
    assert old.exit_code == 4 and json.loads(old.stdout)["version"] == "kb@1", old.output
