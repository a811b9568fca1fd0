"""Probes, the canary gate and serve-time probing (issue 12), on real Chroma with the hashing fakes.

The fast tests rank with BM25: the hashing embedders give random vectors, so only the keyword
index ranks deterministically by meaning. One slow test runs a real ``mmrag serve`` (offline models).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase, release_embedded_store
from mmrag.lifecycle.canary import gate
from mmrag.lifecycle.probes import Probe, ProbeStore, record_probe_run, run_probes
from mmrag.lifecycle.versions import Versions
from mmrag.registry import resolve_models
from tests.conftest import free_port, wait_http

DOCS = {
    "alpaca.txt": "Alpaca wool blankets are woven by hand in the highlands.",
    "basalt.txt": "Basalt columns form when thick lava cools slowly and cracks.",
    "gondola.txt": "The gondola lift carries skiers up to the glacier station.",
    "dolphin.txt": "Dolphins sleep with one half of the brain at a time.",
}
PROBES = [Probe("wool", "alpaca wool blankets", ("alpaca.txt",), 1),
          Probe("lava", "basalt lava columns", ("basalt.txt",), 1),
          Probe("lift", "gondola lift glacier", ("gondola.txt",), 1),
          Probe("sleep", "dolphins sleep brain", ("dolphin.txt",), 1)]


def _kb(data_dir: Path, name: str) -> KnowledgeBase:
    return KnowledgeBase(data_dir, name, resolve_models(Settings()), clip=HashingEmbedder(16), text=HashingEmbedder(8))


def _ingest(kb: KnowledgeBase, root: Path, docs: dict[str, str]) -> KnowledgeBase:
    root.mkdir(parents=True)
    for name, text in docs.items():
        (root / name).write_text(text + "\n")
    summary = Indexer(kb).ingest([root])
    assert not summary.failed, summary.failed
    return kb


@pytest.fixture
def live(hashing_kb: KnowledgeBase, tmp_path: Path) -> KnowledgeBase:
    return _ingest(hashing_kb, tmp_path / "corpus", DOCS)


def _gate(live: KnowledgeBase, candidate: KnowledgeBase, **kwargs):  # type: ignore[no-untyped-def]
    return gate(live, candidate, PROBES, settings=Settings(), retriever="bm25", **kwargs)


# -- the store ------------------------------------------------------------------------------------
def test_store_adds_lists_and_removes_per_knowledge_base(live: KnowledgeBase) -> None:
    store = ProbeStore(live.manifest)
    added = store.add("test", Probe("wool", " alpaca wool ", ("alpaca.txt", "alpaca.txt", " "), 3))
    assert added.query == "alpaca wool" and added.expect == ("alpaca.txt",) and added.created_at > 0
    store.add("test@2", Probe("lava", "basalt", ("basalt.txt",)))  # a version's label: stored on its kb
    store.add("other", Probe("wool", "x", ("y",)))
    assert [p.name for p in store.list("test")] == ["lava", "wool"]
    assert store.knowledge_bases() == ["other", "test"]
    with pytest.raises(InvalidInputError, match="already has a probe named 'wool'"):
        store.add("test", Probe("wool", "again", ("alpaca.txt",)))
    assert store.add("test", Probe("wool", "again", ("alpaca.txt",)), replace=True).query == "again"
    store.remove("test", "wool")
    assert [p.name for p in store.list("test")] == ["lava"]
    with pytest.raises(NotFoundError, match="no probe named 'wool'"):
        store.remove("test", "wool")


@pytest.mark.parametrize(("probe", "field"), [
    (Probe("p", "  ", ("a",)), "query"),
    (Probe("p", "q", ()), "expect"),
    (Probe("p", "q", ("", " ")), "expect"),
    (Probe("p", "q", ("a",), 0), "k"),
    (Probe("p", "q", ("a",), 101), "k"),
    (Probe("p", "q", ("a", "b"), 1), "k"),
    (Probe("bad name", "q", ("a",)), "name"),
])
def test_store_refuses_invalid_probes_naming_the_field(live: KnowledgeBase, probe: Probe, field: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"\b{field}\b"):
        ProbeStore(live.manifest).add("test", probe)
    assert ProbeStore(live.manifest).list("test") == []


# -- running --------------------------------------------------------------------------------------
def test_run_probes_scores_recall_per_probe_and_overall(live: KnowledgeBase) -> None:
    probes = [*PROBES, Probe("both", "alpaca wool dolphins", ("alpaca.txt", "dolphin.txt", "nowhere.txt"), 3)]
    report = run_probes(live, probes, retriever="bm25")
    both = report.result("both")
    assert both is not None and both.recall == pytest.approx(2 / 3) and not both.passed
    assert both.found == ("alpaca.txt", "dolphin.txt") and both.missing == ("nowhere.txt",)
    assert report.failed == ["both"] and not report.passed
    assert report.recall == pytest.approx((4 + 2 / 3) / 5)
    assert 0 < report.p50_latency_s <= report.max_latency_s
    record_probe_run(live.manifest, "test", report)
    figures = Versions(live.manifest).get("test", 1).figures["probes"]
    assert figures["failed"] == ["both"] and figures["probes"] == 5
    assert figures["recall"] == pytest.approx(report.recall)


def test_run_probes_records_a_failed_search_as_a_failing_probe(live: KnowledgeBase) -> None:
    report = run_probes(live, [Probe("img", "lava", ("basalt.txt",))], retriever="text-only-nonsense")
    assert report.failed == ["img"] and report.recall == 0.0
    assert "InvalidInputError" in (report.results[0].error or "")
    assert run_probes(live, []).recall is None  # nothing measured is not a recall of 0


# -- the canary gate ------------------------------------------------------------------------------
def test_gate_refuses_a_degraded_candidate_and_names_the_failed_probes(live: KnowledgeBase, tmp_path: Path) -> None:
    garbage = {**DOCS, "gondola.txt": "Lorem ipsum dolor sit amet.", "dolphin.txt": "Zzz qqq."}
    bad = _ingest(_kb(live.data_dir, "test--v2"), tmp_path / "bad", garbage)
    result = _gate(live, bad, live_label="test@1", candidate_label="test@2")
    assert not result.passed
    assert result.regressed == ["lift", "sleep"] and result.failing == ["lift", "sleep"]
    recall = next(m for m in result.metrics if m.name == "probe_recall")
    assert (recall.live, recall.candidate, recall.delta) == (1.0, 0.5, -0.5)
    table = result.render()
    assert "probe lift FAILS on test@2: missing gondola.txt" in table and "probe sleep FAILS" in table
    assert "REFUSED: probe_recall dropped" in table
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False and data["regressed_probes"] == ["lift", "sleep"]
    assert data["metrics"][0] == {"name": "probe_recall", "live": 1.0, "candidate": 0.5, "delta": -0.5,
                                  "budget": 0.0, "passed": False}


def test_gate_passes_an_equal_candidate(live: KnowledgeBase, tmp_path: Path) -> None:
    good = _ingest(_kb(live.data_dir, "test--v2"), tmp_path / "good", DOCS)
    result = _gate(live, good)
    assert result.passed and result.failing == [] and result.regressed == []
    assert "canary gate: passed" in result.render()


def test_gate_budget_allows_a_small_drop_only(live: KnowledgeBase, tmp_path: Path) -> None:
    # One of the four probes loses its document: probe recall drops by 0.25.
    missing_one = {k: v for k, v in DOCS.items() if k != "dolphin.txt"}
    worse = _ingest(_kb(live.data_dir, "test--v2"), tmp_path / "worse", missing_one)
    assert not _gate(live, worse, budget=0.2).passed
    within = _gate(live, worse, budget=0.25)
    assert within.passed and within.regressed == ["sleep"]  # within budget, still named
    configured = Settings()
    configured.lifecycle.canary_budget = 0.3
    assert gate(live, worse, PROBES, settings=configured, retriever="bm25").passed
    with pytest.raises(InvalidInputError, match="budget"):
        _gate(live, worse, budget=1.5)


def test_gate_runs_the_evaluation_dataset_on_both(live: KnowledgeBase, tmp_path: Path) -> None:
    dataset = tmp_path / "eval.jsonl"
    rows = [{"id": p.name, "query": p.query, "relevant": list(p.expect)} for p in PROBES]
    rows.append({"id": "none", "query": "who won the cup?", "answerable": False})  # left out of rank metrics
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    missing_one = {k: v for k, v in DOCS.items() if k != "basalt.txt"}
    worse = _ingest(_kb(live.data_dir, "test--v2"), tmp_path / "worse", missing_one)
    result = _gate(live, worse, eval_dataset=dataset)
    names = [m.name for m in result.metrics]
    assert names == ["probe_recall", "eval:precision@10", "eval:recall@10", "eval:mrr", "eval:ndcg@10"]
    assert "eval:recall@10" in result.dropped and result.regressed == ["lava"]
    # Without probes, the evaluation alone decides.
    only_eval = gate(live, worse, [], settings=Settings(), eval_dataset=dataset, retriever="bm25")
    assert not only_eval.passed and "probe_recall" not in [m.name for m in only_eval.metrics]
    nothing = gate(live, worse, [], settings=Settings())
    assert nothing.passed and "nothing was compared" in nothing.render()


# -- the CLI --------------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_add_list_remove(live: KnowledgeBase) -> None:
    data = str(live.data_dir)
    code, out, _ = _cli("probes", "add", "test", "--query", "When does the lift run?", "--expect", "gondola.txt",
                        "--data-dir", data)
    assert code == 0 and "added probe when-does-the-lift-run to test" in out
    code, out, _ = _cli("probes", "add", "test", "--query", "lava", "--expect", "basalt.txt", "--expect", "x.txt",
                        "--k", "5", "--name", "lava", "--data-dir", data, "--json")
    assert code == 0 and json.loads(out)["expect"] == ["basalt.txt", "x.txt"]
    code, out, _ = _cli("probes", "list", "test", "--data-dir", data, "--json")
    assert [p["name"] for p in json.loads(out)["probes"]] == ["lava", "when-does-the-lift-run"]
    code, out, _ = _cli("probes", "remove", "test", "lava", "--data-dir", data)
    assert code == 0 and "removed probe lava" in out
    code, out, _ = _cli("probes", "list", "test", "--data-dir", data)
    assert "when-does-the-lift-run: top 10 of 'When does the lift run?' must hold gondola.txt" in out


def test_cli_refuses_bad_input_with_a_message(live: KnowledgeBase) -> None:
    data = str(live.data_dir)
    code, _, err = _cli("probes", "add", "test", "--query", "q", "--expect", "a", "--k", "0", "--data-dir", data)
    assert code == 1 and "k must be a whole number from 1 to 100" in err
    code, _, err = _cli("probes", "add", "nope", "--query", "q", "--expect", "a", "--data-dir", data)
    assert code == 2 and "no collection 'nope'" in err and "Known: test" in err  # as every command (issue 27)
    code, _, err = _cli("probes", "run", "test", "--data-dir", data)
    assert code == 1 and "has no probes" in err


# -- serve-time probing ---------------------------------------------------------------------------
def _metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


@pytest.mark.slow
@pytest.mark.long  # 20 s: a real server for one gauge; the probes are run in-process above
def test_serve_exports_probe_recall_and_logs_a_failing_probe(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update(MMRAG_API__AUTH="false", MMRAG_LIFECYCLE__PROBE_INTERVAL_MINUTES="0.01")  # a round every 0.6 s
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir",
                             str(data_dir), "--port", str(port)], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        wait_http(f"{url}/readyz", 180, proc)
        with httpx.Client(base_url=url, timeout=60) as client:
            files = [("files", (name, text.encode(), "text/plain")) for name, text in DOCS.items()]
            assert client.post("/v1/documents", files=files).status_code == 201
            # The probes are written while the server runs (a manifest row; no store is opened).
            for args in (["--query", "alpaca wool blankets", "--expect", "alpaca.txt", "--name", "wool"],
                         ["--query", "volcanoes of the moon", "--expect", "missing.txt", "--name", "moon"]):
                code, out, err = _cli("probes", "add", "default", *args, "--k", "2", "--data-dir", str(data_dir))
                assert code == 0, out + err
            deadline, recall = time.monotonic() + 60, None
            while recall is None and time.monotonic() < deadline:
                text = client.get("/metrics").text
                recall = _metric(text, "mmrag_probe_recall", collection="default", version="default@1")
                time.sleep(0.3)
            assert recall == 0.5, log.read_text()
            assert _metric(text, "mmrag_probe_failing", collection="default", version="default@1") == 1
            assert (_metric(text, "mmrag_probe_latency_seconds", collection="default", version="default@1") or 0) > 0
            body = client.get("/v1/collections/default/probes").json()
            assert [p["name"] for p in body["probes"]] == ["moon", "wool"]
            assert body["last_runs"][0]["version"] == "default@1" and body["last_runs"][0]["failed"] == ["moon"]
            assert client.get("/v1/collections/nope/probes").status_code == 404
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a hung request must not hide the assertion that failed
            proc.kill()
            proc.wait(timeout=10)
    assert "probe moon of default@1 fails: missing missing.txt" in log.read_text()
    # The server is gone: `probes run` opens the store itself, and exits 4 for the failing probe.
    try:
        code, out, err = _cli("probes", "run", "default", "--profile", "offline", "--data-dir", str(data_dir))
    finally:
        release_embedded_store(data_dir)
    assert code == 4, out + err
    assert re.search(r"^pass  wool .* recall 1\.00", out, re.M)
    assert "FAIL  moon" in out and "(missing missing.txt)" in out
    assert "default@1: recall 0.500 over 2 probes" in out and "failed probes: moon" in err
