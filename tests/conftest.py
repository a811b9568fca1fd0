"""Shared fixtures: environment isolation, a network guard, fakes, and session-wide real models."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_CORPUS = REPO / "ingest" / "sample_corpus"

#: Fixtures that tests of several subjects share (a real API, Chroma servers to kill, the sample
#: server, the evaluation corpus, every store): one module each under tests/helpers/.
pytest_plugins = ["tests.helpers.api", "tests.helpers.eval_corpus", "tests.helpers.faults",
                  "tests.helpers.sample_server", "tests.helpers.stores"]

# Set before any library import reads them (chroma telemetry, HF hub, litellm, ragas).
for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True", "RAGAS_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)


#: One numerics cache for the whole session (mmrag.numerics): each model is measured once per run,
#: and nothing is written to the user's ~/.cache.
NUMERICS_CACHE = tempfile.mkdtemp(prefix="mmrag-test-cache-")


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when the folder is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (only CI and developers have ../shared)")
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("MMRAG_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MMRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MMRAG_CACHE_DIR", NUMERICS_CACHE)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse non-loopback connections so a hidden download fails fast instead of hanging."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in {"127.0.0.1", "::1", "localhost"}:
            raise OSError(f"network access blocked in tests: {address}")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def hashing_kb(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A KnowledgeBase on real Chroma with the deterministic hashing fake for both models."""
    from mmrag.embedders.hashing import HashingEmbedder
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models
    from mmrag.config import Settings

    return KnowledgeBase(tmp_path / "kb", "test", resolve_models(Settings()), clip=HashingEmbedder(16),
                         text=HashingEmbedder(8))


@pytest.fixture(scope="session")
def offline_models():  # type: ignore[no-untyped-def]
    """The real offline-profile models, loaded once per session, built as the CLI and the server build them."""
    from mmrag.config import Settings
    from mmrag.registry import build_embedders, resolve_models

    choice = resolve_models(Settings(profile="offline"))
    return (choice, *build_embedders(choice))


@pytest.fixture
def offline_kb(tmp_path: Path, offline_models):  # type: ignore[no-untyped-def]
    """A KnowledgeBase with the real offline models (session-shared) in a fresh data dir."""
    from mmrag.kb import KnowledgeBase

    choice, clip, text = offline_models
    return KnowledgeBase(tmp_path / "kb", "test", choice, clip=clip, text=text)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float, proc: "subprocess.Popen[bytes] | None" = None) -> None:
    """Poll ``url`` until it answers 2xx, the process dies, or ``seconds`` pass (then fail)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited with status {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {seconds:.0f} s")


def _start_chroma(path: Path):  # type: ignore[no-untyped-def]
    exe = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api/v2/heartbeat", 60, proc)
    except BaseException:
        proc.kill()
        raise
    return proc, url


@pytest.fixture
def chroma_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real `chroma run` server on loopback, for one test."""
    proc, url = _start_chroma(tmp_path / "server")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def shared_chroma_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One `chroma run` server for the whole session (tests use distinct collection names)."""
    proc, url = _start_chroma(tmp_path_factory.mktemp("chroma-server"))
    yield url
    proc.terminate()
    proc.wait(timeout=30)
