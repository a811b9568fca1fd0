"""Issue 8: writers across processes, the embedded-store claim, and damaged stores named, not crashed on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmrag import locks
from mmrag.errors import StoreBusyError
from mmrag.indexing import Indexer
from tests.conftest import SAMPLE_CORPUS

REPO = Path(__file__).resolve().parents[2]


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "MMRAG_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


def _release(kb) -> None:  # type: ignore[no-untyped-def]
    """Let another process open kb's embedded store (this process stops using it)."""
    from chromadb.api.client import SharedSystemClient

    kb.__dict__.pop("client", None)
    SharedSystemClient.clear_system_cache()
    locks.release(kb.data_dir / "locks" / "embedded-chroma.lock")


def _holder(code: str, env: dict[str, str]) -> subprocess.Popen:  # type: ignore[type-arg]
    """A child process that runs ``code`` then prints "ready" and sleeps until killed."""
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport time; time.sleep(120)"],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _ingested(hashing_kb, tmp_path: Path, records: int = 0):  # type: ignore[no-untyped-def]
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    if records:  # enough that Chroma persists its HNSW segments (it keeps small collections in its log)
        (corpus / "many.jsonl").write_text("".join(
            json.dumps({"_id": f"m{i}", "text": f"Lantern record {i}."}) + "\n" for i in range(records)))
    Indexer(hashing_kb).ingest([corpus])
    _release(hashing_kb)
    return corpus


def _cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "mmrag", *args, "--collection", "test"], env=_env(data_dir),
                          capture_output=True, text=True, timeout=300)


def test_finding10_second_process_on_an_embedded_store_is_refused_naming_the_holder(hashing_kb, tmp_path: Path) -> None:
    _ingested(hashing_kb, tmp_path)
    holder = _holder(
        "from pathlib import Path; from mmrag import locks\n"
        f"locks.claim(Path({str(hashing_kb.data_dir / 'locks' / 'embedded-chroma.lock')!r}), what='x', hint='y')",
        _env(hashing_kb.data_dir))
    try:
        done = _cli(["delete", "visitor-faq.html"], hashing_kb.data_dir)
        # `mmrag serve` beside it is refused at start (not a server that never gets ready).
        served = subprocess.run([sys.executable, "-m", "mmrag", "serve", "--no-auth", "--port", "1",
                                 "--collection", "test"], env=_env(hashing_kb.data_dir), capture_output=True,
                                text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    assert f"is open in pid {holder.pid}" in done.stderr and "--store-url" in done.stderr, done.stderr
    assert served.returncode == 1 and f"is open in pid {holder.pid}" in served.stderr, served.stderr[-2000:]
    # Nothing changed: once the holder is gone the document is still there.
    assert hashing_kb.manifest.get("test", "visitor-faq.html") is not None
    assert _cli(["status", "--json"], hashing_kb.data_dir).returncode == 0


def test_writer_lock_times_out_with_the_holder_named(hashing_kb, tmp_path: Path) -> None:
    lock = hashing_kb.data_dir / "locks" / "test.lock"
    holder = _holder(
        "from pathlib import Path; from mmrag import locks\n"
        f"cm = locks.exclusive(Path({str(lock)!r}), timeout=0, what='w'); cm.__enter__()",
        _env(hashing_kb.data_dir))
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match=rf"held by pid {holder.pid} \(`-c"):
            with hashing_kb.write_lock(timeout=0.5):
                pass
        assert time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()
    with hashing_kb.write_lock(timeout=5):  # released by the kernel when the holder died
        pass


def _segment_dirs(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "chroma").iterdir() if p.is_dir()]


# One damage in make test (20 s each on CI); all three in the long tier.
@pytest.mark.parametrize("damage", ["delete_segments", pytest.param("overwrite_level0", marks=pytest.mark.long),
                                    pytest.param("truncate_sqlite", marks=pytest.mark.long)])
def test_finding6_damaged_store_is_named_with_the_rebuild(hashing_kb, tmp_path: Path, damage: str) -> None:
    corpus = _ingested(hashing_kb, tmp_path, records=2500)
    data_dir = hashing_kb.data_dir
    assert _segment_dirs(data_dir), "Chroma wrote no HNSW segment folders"
    if damage == "delete_segments":
        for folder in _segment_dirs(data_dir):
            shutil.rmtree(folder)
    elif damage == "overwrite_level0":
        for folder in _segment_dirs(data_dir):
            level0 = folder / "data_level0.bin"
            level0.write_bytes(os.urandom(level0.stat().st_size))
            (folder / "header.bin").write_bytes(os.urandom((folder / "header.bin").stat().st_size))
    else:
        (data_dir / "chroma" / "chroma.sqlite3").write_bytes(b"")
    for command in (["status"], ["search", "lantern", "--retriever", "text", "--profile", "offline"]):
        done = _cli(command, data_dir)
        assert done.returncode not in (0, -11, 139), (command, done.returncode, done.stderr[-2000:])
        message = done.stderr + done.stdout
        assert "damaged" in message or "PROBLEM" in message, (command, message[-2000:])
        assert "mmrag ingest" in message, message[-2000:]
    # The command it names rebuilds the store from the manifest and the sources.
    shutil.move(data_dir / "chroma", data_dir / "chroma.damaged")
    rebuilt = subprocess.run([sys.executable, "-c", (
        "import json, sys; from pathlib import Path\n"
        "from mmrag.config import Settings; from mmrag.embedders.hashing import HashingEmbedder\n"
        "from mmrag.indexing import Indexer; from mmrag.kb import KnowledgeBase; from mmrag.registry import resolve_models\n"
        f"kb = KnowledgeBase(Path({str(data_dir)!r}), 'test', resolve_models(Settings()), clip=HashingEmbedder(16), text=HashingEmbedder(8))\n"
        f"s = Indexer(kb).ingest([Path({str(corpus)!r})]); print(json.dumps(s.to_dict())); print(json.dumps(kb.health().problems))")],
        env=_env(data_dir), capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    summary, problems = (json.loads(line) for line in rebuilt.stdout.strip().splitlines()[-2:])
    assert summary["repaired"] > 0 and problems == []


def test_a_hung_chroma_server_fails_the_request_instead_of_blocking(tmp_path: Path) -> None:
    """chromadb's HTTP client waits forever by default; a stopped server must become a StoreError."""
    import signal

    from mmrag.config import Settings
    from mmrag.embedders.hashing import HashingEmbedder
    from mmrag.errors import StoreError
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models
    from tests.conftest import _start_chroma

    proc, url = _start_chroma(tmp_path / "server")
    try:
        kb = KnowledgeBase(tmp_path / "data", "hang", resolve_models(Settings()), store_url=url,
                           clip=HashingEmbedder(16), text=HashingEmbedder(8), store_timeout=2.0)
        assert kb.bare_store("clip").count() == 0
        proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            kb.bare_store("text").count()
        assert time.monotonic() - started < 30
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
