"""Issue 28, acceptance 4: the access log answers "who read document X", and holds no query text unless asked.

A scripted session goes through the real app (real embedded Chroma; the hashing and echo fakes
stand in for the models, as in the rest of tests/http): a write key uploads, two read keys search,
ask for an answer, ask for a chat completion and call an MCP tool, and a write key deletes a
document. ``mmrag audit`` (through click) must then name exactly the keys whose responses showed
each document, and exactly the uploads and deletes that wrote it; the log file must not contain
the query text, unless ``MMRAG_API__ACCESS_LOG_QUERIES`` is on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.helpers.api import Api, make_api

LIGHTHOUSE = b"The lighthouse on the north cape was built in 1858. Its keeper lit the lamp at dusk every night."
BAKERY = b"# Bakery\n\nThe bakery on Mill Street sells rye bread and cinnamon rolls from seven in the morning."
LEDGER = b"The quarterly ledger lists invoices, payments and the balance carried to the next quarter."
#: Marked words no document holds, so a query string found in the log can only be the query itself.
SEARCH_QUERY = "lighthouse keeper lamp zebulon-7781"
QUESTION = "When was the lighthouse built, quixotic-4402?"
CHAT_QUESTION = "What does the bakery sell, marmalade-9153?"


@pytest.fixture
def session_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Api]:
    """The app over embedded Chroma; ``queries`` turns on query text; rotation every ~1 KB."""
    if getattr(request, "param", False):
        monkeypatch.setenv("MMRAG_API__ACCESS_LOG_QUERIES", "true")
    # Tiny files, so the session spans several rotations and audit must read them all.
    monkeypatch.setenv("MMRAG_API__ACCESS_LOG_MAX_BYTES", "1024")
    monkeypatch.setenv("MMRAG_API__ACCESS_LOG_BACKUPS", "100")
    yield from make_api(tmp_path / "data", None)


def _key_id(api: Api, who: str) -> str:
    return api.tokens[who].split("_")[1]


def _mcp_call(api: Api, who: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    r = api.client.post("/mcp", headers={**api.auth(who), "Accept": "application/json, text/event-stream"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                              "params": {"name": tool, "arguments": arguments}})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]  # type: ignore[no-any-return]


#: Per document, the (key id, method, route) of each request that wrote it; filled by :func:`_session`.
Written = dict[str, set[tuple[str, str, str]]]


def _session(api: Api, written: Written | None = None) -> dict[str, set[tuple[str, str]]]:
    """Run the session; returns, per document, the (key id, route) pairs whose responses showed it."""
    a = api.col("a")
    written = {} if written is None else written
    r = api.upload("writer", a, ("lighthouse.txt", LIGHTHOUSE), ("bakery.md", BAKERY), ("ledger.txt", LEDGER))
    assert r.status_code == 201, r.text
    for doc in ("lighthouse.txt", "bakery.md", "ledger.txt"):
        written.setdefault(doc, set()).add((_key_id(api, "writer"), "POST", "/v1/documents"))
    shown: dict[str, set[tuple[str, str]]] = {}

    def saw(who: str, route: str, doc_ids: list[str]) -> None:
        for doc in doc_ids:
            shown.setdefault(doc, set()).add((_key_id(api, who), route))

    for who, query in (("reader_a", SEARCH_QUERY), ("reader", "bakery rye bread cinnamon")):
        r = api.client.post("/v1/search", headers=api.auth(who),
                            json={"query": query, "collection": a, "retriever": "bm25", "k": 1})
        assert r.status_code == 200, r.text
        saw(who, "/v1/search", [h["doc_id"] for h in r.json()["hits"]])
    api.echo.enqueue("The lighthouse was built in 1858 [1].")
    r = api.client.post("/v1/answer", headers=api.auth("reader"),
                        json={"question": QUESTION, "collection": a, "retriever": "bm25", "k": 1})
    assert r.status_code == 200 and r.json()["abstained"] is False, r.text
    saw("reader", "/v1/answer", [c["doc_id"] for c in r.json()["citations"]])
    api.echo.enqueue("The bakery sells rye bread and cinnamon rolls [1].")
    r = api.client.post("/v1/chat/completions", headers=api.auth("reader_a"),
                        json={"model": "mmrag", "collection": a, "k": 1,
                              "messages": [{"role": "user", "content": CHAT_QUESTION}]})
    assert r.status_code == 200, r.text
    saw("reader_a", "/v1/chat/completions", [c["doc_id"] for c in r.json()["citations"]])
    out = _mcp_call(api, "reader", "search", {"query": "quarterly ledger invoices", "collection": a, "k": 1,
                                               "retriever": "bm25"})
    saw("reader", "/mcp", [h["doc_id"] for h in out["hits"]])
    r = api.client.delete("/v1/documents/ledger.txt", params={"collection": a}, headers=api.auth("writer_a"))
    assert r.status_code == 200, r.text
    written["ledger.txt"].add((_key_id(api, "writer_a"), "DELETE", "/v1/documents/{doc_id:path}"))
    # Refused: logged, with no key and nothing read.
    assert api.client.post("/v1/search", json={"query": SEARCH_QUERY, "collection": a}).status_code == 401
    return shown


def _audit(api: Api, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["audit", "--log", str(api.data_dir / "access.log"), "--json", *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _log_text(api: Api) -> str:
    files = sorted(api.data_dir.glob("access.log*"))
    return "".join(p.read_text(encoding="utf-8") for p in files)


def test_audit_answers_who_read_each_document_and_what_each_key_read(session_api: Api) -> None:
    api = session_api
    written: Written = {}
    shown = _session(api, written)
    assert {"lighthouse.txt", "bakery.md", "ledger.txt"} <= set(shown), shown
    assert len(list(api.data_dir.glob("access.log.*"))) >= 2, "the session should span rotated files"
    for doc, expected in shown.items():
        rows = _audit(api, "--doc", doc)
        # Shown to the caller: exactly the keys (and routes) whose responses held it.
        assert {(e["key"], e["route"]) for e in rows if doc in e["doc_ids"]} == expected, (doc, rows)
        # Written: exactly the upload, and the delete of ledger.txt; a write shows the caller nothing.
        writes = [e for e in rows if doc in e["written_doc_ids"]]
        assert {(e["key"], e["method"], e["route"]) for e in writes} == written[doc], (doc, rows)
        assert all(e["doc_ids"] == [] and e["collection"] == api.col("a") for e in writes)
        assert all(e["status"] == (201 if e["method"] == "POST" and e["route"] == "/v1/documents" else 200)
                   and e["ms"] >= 0 and e["time"] for e in rows)
    # "What did key Y read, and when": reader_a's two reads, in order, and nothing of reader's.
    rows = _audit(api, "--key", _key_id(api, "reader_a"))
    assert [e["route"] for e in rows] == ["/v1/search", "/v1/chat/completions"]
    assert all(e["key_name"] == "reader_a" and e["collection"] == api.col("a") for e in rows)
    assert [e["time"] for e in rows] == sorted(e["time"] for e in rows)
    assert _audit(api, "--key", "reader_a") == rows  # by name too
    # The writers' requests: the upload names all three documents it wrote, the delete the one it removed.
    uploads = _audit(api, "--key", "writer")
    assert [(e["route"], e["status"], e["written_doc_ids"]) for e in uploads] == [
        ("/v1/documents", 201, ["lighthouse.txt", "bakery.md", "ledger.txt"])]
    deletes = _audit(api, "--key", "writer_a")
    assert [(e["method"], e["status"], e["written_doc_ids"]) for e in deletes] == [("DELETE", 200, ["ledger.txt"])]
    mcp = [e for e in _audit(api, "--key", "reader") if e["route"] == "/mcp"]
    assert len(mcp) == 1 and mcp[0]["tool"] == "search" and mcp[0]["doc_ids"] == ["ledger.txt"]
    assert _audit(api, "--key", "reader_a", "--since", "1h") == rows
    assert _audit(api, "--key", "reader_a", "--since", "2999-01-01T00:00") == []
    refused = [e for e in _audit(api) if e["status"] == 401]
    assert len(refused) == 1 and refused[0]["key"] is None and refused[0]["doc_ids"] == []
    # The plain listing names the key and the route.
    text = CliRunner().invoke(main, ["audit", "--log", str(api.data_dir / "access.log"), "--doc", "lighthouse.txt"])
    assert text.exit_code == 0 and _key_id(api, "reader_a") in text.output and "/v1/search" in text.output
    text = CliRunner().invoke(main, ["audit", "--log", str(api.data_dir / "access.log"), "--doc", "ledger.txt"])
    assert text.exit_code == 0 and "wrote ledger.txt" in text.output and _key_id(api, "writer_a") in text.output


def test_log_lines_hold_no_query_text_or_token_by_default(session_api: Api) -> None:
    api = session_api
    _session(api)
    text = _log_text(api)
    assert text.count("\n") == 8  # one line per request: upload, 2 searches, answer, chat, MCP, delete, the 401
    for secret in (SEARCH_QUERY, QUESTION, CHAT_QUESTION, "zebulon", "quixotic", "marmalade", "quarterly ledger",
                   *api.tokens.values()):
        assert secret not in text, secret
    assert all("query" not in json.loads(line) for line in text.splitlines())


@pytest.mark.parametrize("session_api", [True], indirect=True)
def test_log_lines_hold_the_query_text_when_asked(session_api: Api) -> None:
    api = session_api
    _session(api)
    text = _log_text(api)
    for query in (SEARCH_QUERY, QUESTION, CHAT_QUESTION, "quarterly ledger invoices"):
        assert json.dumps(query)[1:-1] in text, query
    assert not any(token in text for token in api.tokens.values())


def test_audit_without_a_log_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["audit", "--log", str(tmp_path / "none.log"), "--doc", "x"])
    assert result.exit_code == 2 and "none.log" in result.output


@pytest.mark.parametrize("where", ["-", "off"])
def test_log_to_stdout_or_off(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMRAG_API__ACCESS_LOG", where)
    for api in make_api(tmp_path / "data", None):
        assert api.client.get("/v1/models", headers=api.auth("reader")).status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert not list((tmp_path / "data").glob("access.log*"))
    if where == "-":
        assert [(e["route"], e["key_name"], e["status"]) for e in lines] == [("/v1/models", "reader", 200)]
    else:
        assert lines == []
