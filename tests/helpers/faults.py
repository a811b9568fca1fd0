"""Fixtures for fault injection: Chroma servers that a test can kill -9 and restart, a small tmpfs, doc markers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
#: Every process these tests start gets one thread each: the machine has 2 cores shared with others.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: no MMRAG_* from the caller, offline, one thread, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update(THREADS, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))  # this checkout's mmrag, not an install's
    env.update(extra)
    return env


def marker(prefix: str, i: int) -> str:
    """A token unique to document ``i``, also after BM25's stemmer.

    Letters only, ending in "q": the English stemmer strips endings such as "s" and "e", which
    made "...bcs" and "...bce" one term; no suffix rule ends in "q".
    """
    letters = ""
    i += 26 * 26  # at least three letters
    while i:
        i, r = divmod(i, 26)
        letters = "abcdefghijklmnopqrstuvwxyz"[r] + letters
    return f"{prefix}{letters}q"


class ChromaServer:
    """A `chroma run` server on loopback over ``path`` that can be killed and started again on the same path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, port: int | None = None) -> str:
        """Start the server (on ``port``, else a fresh free one) and wait for its heartbeat; returns its URL."""
        exe = shutil.which("chroma", path=str(Path(sys.executable).parent))
        if exe is None:
            pytest.skip("the chroma CLI is not installed")
        port = port or free_port()
        log = (self.path.parent / f"{self.path.name}-{port}.log").open("wb")
        self.proc = subprocess.Popen([exe, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(port)],
                                     stdout=log, stderr=subprocess.STDOUT, env=child_env())
        self.url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{self.url}/api/v2/heartbeat", 60, self.proc)
        except BaseException:
            self.kill()
            raise
        return self.url

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """A clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def chroma_servers() -> Iterator[list[ChromaServer]]:
    """A list to put :class:`ChromaServer` objects in; every one still running is stopped at teardown."""
    servers: list[ChromaServer] = []
    yield servers
    for server in servers:
        server.stop()


def _mounted(folder: Path) -> bool:
    return os.path.ismount(folder)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 16 MiB tmpfs at ``tmp_path/disk``, as (folder, size); skipped where this process may not mount one.

    Unmounted at teardown, lazily if a file on it is still open, so a failing test never leaves it mounted.
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    size = "16M"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not _mounted(folder):
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    try:
        yield folder, size
    finally:
        if _mounted(folder) and subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def grow_tmpfs(folder: Path, size: str) -> None:
    """Free space on a tmpfs by growing it in place (its files stay)."""
    done = subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, f"could not grow the tmpfs: {done.stderr}"
