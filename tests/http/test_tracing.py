"""Traces (issue 13, acceptance 4): one ``/v1/answer`` yields the query's spans, linked parent to child.

The server (tests/helpers/sample_server.py) runs on real Chroma, the real offline models and the
real offline chat model (SmolLM2), with API keys on, in this process: an in-memory exporter
added to the tracer provider collects its spans.
"""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mmrag import tracing
from tests.helpers.tracing import memory_exporter
from tests.helpers.sample_server import COLLECTION, DEMO_QUESTION, SampleServer


def test_otel_variables_decide_whether_traces_are_wanted() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_SERVICE_NAME": "x"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})


def test_unknown_exporter_is_a_config_error() -> None:
    from mmrag.errors import ConfigError

    if tracing.enabled():
        pytest.skip("a provider is installed already (configure() leaves it alone)")
    with pytest.raises(ConfigError, match="known: otlp, console"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert not tracing.enabled()


def test_span_without_a_provider_is_a_no_op() -> None:
    if tracing.enabled():
        pytest.skip("a provider is installed already")
    with tracing.span("x", collection="c", items=[1, "a"]) as s:
        s.set_attributes(hits=3)
        tracing.set_attributes(more=1)
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's tracer provider (installed once: OpenTelemetry allows one)."""
    exporter = memory_exporter()
    yield exporter
    exporter.shutdown()  # later spans in this process are dropped, not kept


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["generate", "extractive"])
def test_one_answer_request_yields_linked_spans(sample_server: SampleServer, exporter: InMemorySpanExporter,
                                                mode: str) -> None:
    exporter.clear()
    r = httpx.post(f"{sample_server.url}/v1/answer", headers=sample_server.auth(sample_server.reader), timeout=300,
                   json={"question": DEMO_QUESTION, "verify": "mark", "answer_mode": mode})
    assert r.status_code == 200, r.text
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("mmrag.")]
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    print(sorted((s.name, dict(s.attributes or {}).get("mmrag.retriever")) for s in spans))

    def one(name: str) -> ReadableSpan:
        assert len(by_name.get(name, [])) == 1, (name, sorted(by_name))
        return by_name[name][0]

    def parent_of(s: ReadableSpan) -> int | None:
        return s.parent.span_id if s.parent else None

    root, search, fuse = one("mmrag.http.answer"), one("mmrag.search"), one("mmrag.fuse")
    # Both modes extract first (the calibrated gate reads the extraction); only generate calls the LLM.
    answer, extract, verify = one("mmrag.answer"), one("mmrag.extract"), one("mmrag.verify")
    if mode == "extractive":
        assert "mmrag.llm" not in by_name, sorted(by_name)
        llm = extract
    else:
        llm = one("mmrag.llm")
    retrieves = by_name["mmrag.retrieve"]
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert parent_of(search) == root.context.span_id and parent_of(answer) == root.context.span_id
    assert {parent_of(s) for s in [*retrieves, fuse]} == {search.context.span_id}
    assert parent_of(llm) == answer.context.span_id and parent_of(verify) == answer.context.span_id
    assert parent_of(extract) == answer.context.span_id
    # Hybrid: one span per retriever, each with its count.
    assert sorted(s.attributes["mmrag.retriever"] for s in retrieves) == ["bm25", "clip", "text"]  # type: ignore[index]
    assert all(int(s.attributes["mmrag.hits"]) > 0 for s in retrieves)  # type: ignore[arg-type,index]
    # The query is embedded inside its retriever's span (CLIP and MiniLM); the verifier embeds inside its own.
    embeds = by_name["mmrag.embed"]
    retrieve_ids = {s.context.span_id for s in retrieves}
    assert {s.attributes["mmrag.embedder"].split(":")[0] for s in embeds if parent_of(s) in retrieve_ids} == {  # type: ignore[union-attr,index]
        "open_clip", "sentence-transformers"}
    assert any(parent_of(s) == verify.context.span_id for s in embeds)
    # Every span carries the collection; the counts are there.
    assert {s.attributes.get("mmrag.collection") for s in spans} == {COLLECTION}  # type: ignore[union-attr]
    body = r.json()
    assert fuse.attributes["mmrag.candidates"] >= fuse.attributes["mmrag.hits"] > 0  # type: ignore[index,operator]
    assert answer.attributes["mmrag.citations"] == len(body["citations"])  # type: ignore[index]
    assert body["mode"] == mode
    if mode == "generate":
        assert llm.attributes["mmrag.completion_tokens"] == body["usage"]["completion_tokens"] > 0  # type: ignore[index]
    else:
        assert extract.attributes["mmrag.sentences"] > 0 and body["usage"]["completion_tokens"] == 0  # type: ignore[index,operator]
    assert verify.attributes["mmrag.answers"] == 1  # type: ignore[index]
    assert root.end_time >= answer.end_time >= llm.end_time  # type: ignore[operator]
