"""Acceptance 1: the official ``openai`` client against a real ``mmrag serve`` (offline models, SmolLM2).

Also: several workers on a real Chroma server, uploading through one request and finding it
through the next (whichever worker answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.kb import release_embedded_store
from tests.conftest import SAMPLE_CORPUS, free_port, wait_http

pytestmark = pytest.mark.slow


def _serve(data_dir: Path, *args: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    log = data_dir.parent / f"serve-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir", str(data_dir),
                             "--port", str(port), *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", 180, proc)
    except BaseException:
        proc.kill()
        print(log.read_text())
        raise
    return proc, url, log


def _key(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["keys", "create", "test", "--data-dir", str(data_dir), "--json", *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["token"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    pytest.importorskip("gguf")
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    result = CliRunner().invoke(main, ["ingest", str(SAMPLE_CORPUS), "--profile", "offline", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    release_embedded_store(data_dir)  # the server opens it next: one process at a time
    token = _key(data_dir, "--scope", "read")
    proc, url, _ = _serve(data_dir)
    yield url, token
    proc.terminate()
    proc.wait(timeout=30)


def test_openai_client_non_streamed_answer_has_citations(server: tuple[str, str]) -> None:
    from openai import OpenAI

    url, token = server
    client = OpenAI(base_url=f"{url}/v1", api_key=token, timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model="mmrag", messages=[{"role": "user", "content": "When does the building close on weekdays?"}])
    text = reply.choices[0].message.content or ""
    extra = reply.model_extra or {}
    assert "18" in text, text
    assert extra["citations"] and extra["citations"][0]["doc_id"] == "visitor-faq.html"
    assert extra["mmrag"]["abstained"] is False and extra["mmrag"]["mode"] == "extractive"  # the offline default
    # The chat model still answers when asked to (and its tokens are counted).
    reply = client.chat.completions.create(
        model="mmrag", messages=[{"role": "user", "content": "When does the building close on weekdays?"}],
        extra_body={"answer_mode": "generate"})
    assert (reply.model_extra or {})["mmrag"]["mode"] == "generate"
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_openai_client_streamed_answer_has_citations(server: tuple[str, str]) -> None:
    from openai import OpenAI

    url, token = server
    client = OpenAI(base_url=f"{url}/v1", api_key=token, timeout=120, max_retries=0)
    stream = client.chat.completions.create(
        model="mmrag", stream=True,
        messages=[{"role": "user", "content": "When does the building close on weekdays?"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1].model_extra or {}
    assert "18" in text, text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert last["citations"] and last["citations"][0]["doc_id"] == "visitor-faq.html"


def test_openai_client_unanswerable_question_abstains(server: tuple[str, str]) -> None:
    from openai import OpenAI

    url, token = server
    client = OpenAI(base_url=f"{url}/v1", api_key=token, timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model="mmrag", messages=[{"role": "user", "content": "Who won the 1998 football world cup?"}])
    verdict = (reply.model_extra or {})["mmrag"]
    assert verdict["abstained"] is True and verdict["guard"] == "abstained:calibrated"
    assert verdict["abstention"]["p_answerable"] < verdict["abstention"]["threshold"]  # and says why
    assert "don't know" in (reply.choices[0].message.content or "")


def test_openai_client_without_key_is_refused(server: tuple[str, str]) -> None:
    from openai import AuthenticationError, OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="mmrag_00000000_" + "x" * 43, max_retries=0)
    with pytest.raises(AuthenticationError):
        client.chat.completions.create(model="mmrag", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.long  # 14 s: two server workers and a Chroma server; tests/stores/test_shared_server.py keeps the shared server in make test
def test_two_workers_on_a_chroma_server(shared_chroma_server: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    writer = _key(data_dir, "--scope", "write")
    proc, url, log = _serve(data_dir, "--workers", "2", "--store-url", shared_chroma_server, "--collection", "workers2")
    try:
        headers = {"Authorization": f"Bearer {writer}"}
        files = [("files", ("faq.html", (SAMPLE_CORPUS / "visitor-faq.html").read_bytes()))]
        r = httpx.post(f"{url}/v1/documents", headers=headers, files=files, timeout=120)
        assert r.status_code == 201, r.text
        for _ in range(6):  # several requests, so both workers answer some
            r = httpx.post(f"{url}/v1/search", headers=headers, timeout=60,
                           json={"query": "when does the building close", "retriever": "hybrid", "k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["doc_id"] == "faq.html"
        assert "Started parent process" in log.read_text() or "worker" in log.read_text().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_serve_refuses_two_workers_on_the_embedded_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--workers", "2", "--data-dir", str(tmp_path), "--profile", "offline"])
    assert result.exit_code == 1 and "need a Chroma server" in result.output
