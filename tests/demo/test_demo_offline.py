"""Issue 13, acceptance 5: ``make demo`` with no model hub in reach says so in one line, fast, without retries.

The hub is made unreachable the way an offline machine sees it: ``HF_ENDPOINT`` points at a
loopback port nobody listens on (refused), and an empty ``HF_HOME`` holds no cached model. The
hub-offline variables the test suite sets are removed, so the demo runs as ``make demo`` does on
a user's machine. ``-o .venv/bin/mmrag`` keeps make from reinstalling the venv; the recipe that
runs is the Makefile's own. The test stops the demo once the fallback models have ingested the
corpus and answered a search (tests/demo/test_demo.py runs the offline demo to its end).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from queue import Empty, Queue
from threading import Thread

import pytest

from tests.conftest import REPO, free_port

FALLBACK = "!! model hub unreachable"
RETRY_WORDS = ("Retrying", "Retry ", "thrown while requesting", "huggingface_hub")


def _demo_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("mmrag_demo", REPO / "ingest" / "demo.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_hub_probe_gives_up_on_a_server_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        reason = _demo_module().hub_unreachable(seconds=1.5)
        took = time.monotonic() - started
    assert reason is not None and reason.startswith("http://127.0.0.1:"), reason
    assert took < 3.0, took


def test_hub_probe_accepts_any_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's naming
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert _demo_module().hub_unreachable(seconds=3) is None  # a 404 is an answer: the network is there
    finally:
        server.shutdown()


@pytest.mark.slow
def test_make_demo_offline_falls_back_in_one_line_without_retries(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MMRAG_", "HF_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path / "hf-home"),
               MMRAG_DATA_DIR=str(tmp_path / "demo"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    started = time.monotonic()
    proc = subprocess.Popen(["make", "-o", ".venv/bin/mmrag", "demo"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []
    queue: Queue[str | None] = Queue()
    assert proc.stdout is not None
    # A thread stamps each line as it arrives (a select() on a buffered pipe would stamp late).
    Thread(target=lambda: [queue.put(line) for line in proc.stdout] + [queue.put(None)], daemon=True).start()  # type: ignore[func-returns-value,union-attr]
    try:
        deadline = started + 300
        while time.monotonic() < deadline:
            try:
                line = queue.get(timeout=1)
            except Empty:
                continue
            if line is None:
                break
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            # The fallback models ingested the corpus and answered the first search: enough.
            if line.startswith("  3.") and any(">> text -> image" in t for _, t in lines):
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    output = "\n".join(f"{t:6.2f}s {text}" for t, text in lines)
    print(output)
    fallback = [(t, text) for t, text in lines if text.startswith(FALLBACK)]
    assert len(fallback) == 1, output
    assert fallback[0][0] < 10.0, output
    assert "switching to the offline profile" in fallback[0][1]
    assert not [text for _, text in lines if any(w in text for w in RETRY_WORDS)], output
    assert not [text for _, text in lines if text.startswith(("WARNING", "ERROR"))], output
    assert any(text.startswith("mmrag demo | profile=offline") for _, text in lines), output
    assert any(text.startswith("ingested ingest/sample_corpus: indexed 8") for _, text in lines), output
    assert any("[image] images/red-circle.png" in text for _, text in lines), output
