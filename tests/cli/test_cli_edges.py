"""The CLI's edges (issue 27): each test drives the real command line (CliRunner, or a subprocess where
a terminal or a socket is the point) on real files and real Chroma with the offline models.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from mmrag.cli import EXIT_PARTIAL, main
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("The lift on the east side was serviced on Monday.\n")
    (root / "guide.md").write_text("# Boilers\n\nThe boiler room key hangs beside the north door.\n")
    Image.new("RGB", (64, 64), (220, 30, 30)).save(root / "red.png")
    return root


def _cli(*args: str, data_dir: Path) -> Result:
    return CliRunner().invoke(main, [*args, "--profile", "offline", "--data-dir", str(data_dir)],
                              catch_exceptions=False)


def _tree(folder: Path) -> list[str]:
    # SQLite's -wal/-shm sidecars come and go with connections (a checkpoint at the last close removes
    # them); they are the manifest's own, not something a command created for the typo.
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not p.name.endswith(("-wal", "-shm")))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the collection ``kb`` (three files, indexed with the offline models)."""
    root = tmp_path_factory.mktemp("built")
    data = root / "data"
    result = _cli("ingest", str(_corpus(root / "corpus")), "--collection", "kb", "--json", data_dir=data)
    assert result.exit_code == 0, result.output
    return data


def _reading_commands(tmp_path: Path, name: str) -> list[list[str]]:
    dataset = tmp_path / "ds.jsonl"
    dataset.write_text(json.dumps({"id": "q1", "query": "lift", "relevant": ["notes.txt"]}) + "\n")
    return [["status", "--collection", name], ["search", "lift", "--collection", name],
            ["ask", "Where is the key?", "--collection", name], ["documents", "--collection", name],
            ["delete", "notes.txt", "--collection", name], ["doctor", name], ["drift", name],
            ["versions", name], ["snapshot", "create", name, str(tmp_path / "snap")],
            ["eval", "retrieval", str(dataset), "--collection", name],
            ["eval", "run", str(dataset), "--out", str(tmp_path / "report"), "--no-answer", "--collection", name],
            ["probes", "list", name], ["reindex", name], ["promote", name, "2"], ["rollback", name],
            ["versions", "prune", name], ["reset", "--yes", "--collection", name]]


def test_an_unknown_collection_is_a_usage_error_that_creates_nothing(built: Path, tmp_path: Path) -> None:
    before = _tree(built)
    for command in _reading_commands(tmp_path, "kbb"):
        result = _cli(*command, data_dir=built)
        assert result.exit_code == 2, (command, result.output)
        assert "no collection 'kbb'" in result.stderr and "Known: kb." in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.output
    assert _tree(built) == before  # no keyword folder, no Chroma collection, no lock file for the typo
    assert not (tmp_path / "snap").exists() and not (tmp_path / "report").exists()

    # A version that does not exist is the same mistake, and names the command that lists them.
    result = _cli("status", "--collection", "kb@7", data_dir=built)
    assert result.exit_code == 2 and "kb@7 does not exist" in result.stderr and "Known: kb" in result.stderr

    # A data dir that does not exist is not created to find that out.
    missing = tmp_path / "nowhere"
    for command in _reading_commands(tmp_path, "default"):
        result = _cli(*command, data_dir=missing)
        assert result.exit_code == 2, (command, result.output)
        assert "holds no collection yet" in result.stderr and "mmrag ingest PATH --collection default" in result.stderr
    assert not missing.exists()
    # An invalid name is still a bad value (exit 1), not a missing collection.
    result = _cli("status", "--collection", "bad name!", data_dir=built)
    assert result.exit_code == 1 and "Invalid collection name" in result.stderr


def test_versions_behind_an_alias_count_as_known(tmp_path: Path) -> None:
    from mmrag.lifecycle.versions import Versions
    from mmrag.manifest import Manifest

    data = tmp_path / "data"
    assert _cli("ingest", str(_corpus(tmp_path / "corpus")), "--collection", "kb", data_dir=data).exit_code == 0
    manifest = Manifest(data / "manifest.sqlite3")
    try:  # what `mmrag reindex` then `mmrag promote` leave: kb -> kb@2, a physical collection with no documents yet
        versions = Versions(manifest)
        versions.adopt("kb")
        version = versions.begin("kb", {})
        versions.set_state("kb", version.number, "ready")
        versions.switch("kb", version.number, reason="test")
    finally:
        manifest.close()
    for name in ("kb", "kb@1", "kb@2"):
        result = _cli("status", "--collection", name, "--json", data_dir=data)
        assert result.exit_code == 0, (name, result.output)
    assert json.loads(_cli("status", "--collection", "kb@1", "--json", data_dir=data).stdout)["documents"] == {"done": 3}
    listed = json.loads(_cli("collections", "--json", data_dir=data).stdout)
    assert [(c["name"], c["live"], c["versions"], c["documents"]) for c in listed] == [("kb", "kb@2", 2, 0)]


def test_collections_and_documents_list_what_the_manifest_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    empty = _cli("collections", "--json", data_dir=data)
    assert empty.exit_code == 0 and json.loads(empty.stdout) == [] and not data.exists()
    assert "no collections in" in _cli("collections", data_dir=data).stdout

    corpus = _corpus(tmp_path / "corpus")
    (corpus / "broken.png").write_bytes(b"not an image")
    assert _cli("ingest", str(corpus), "--collection", "docs", data_dir=data).exit_code == EXIT_PARTIAL
    assert _cli("ingest", str(corpus / "notes.txt"), "--collection", "other", data_dir=data).exit_code == 0

    listed = {c["name"]: c for c in json.loads(_cli("collections", "--json", data_dir=data).stdout)}
    assert set(listed) == {"docs", "other"}
    assert (listed["docs"]["live"], listed["docs"]["documents"], listed["docs"]["failed"]) == ("docs@1", 3, 1)
    assert listed["docs"]["chunks"] == 2 and listed["other"]["chunks"] == 1  # the text chunks; the image has none
    table = _cli("collections", data_dir=data).stdout
    assert re.search(r"^docs\s+docs@1\s+3\s+2\s+1$", table, re.M), table

    rows = json.loads(_cli("documents", "--collection", "docs", "--json", data_dir=data).stdout)
    assert {r["doc_id"]: r["status"] for r in rows} == {"broken.png": "failed", "guide.md": "indexed",
                                                        "notes.txt": "indexed", "red.png": "indexed"}
    assert all(r["source"] == str(corpus / r["doc_id"]) and r["updated"] for r in rows)
    failed = json.loads(_cli("documents", "--collection", "docs", "--status", "failed", "--json", data_dir=data).stdout)
    assert [r["doc_id"] for r in failed] == ["broken.png"] and "not a format Pillow recognises" in failed[0]["reason"]
    text = _cli("documents", "--collection", "docs", "--status", "failed", data_dir=data).stdout
    assert "broken.png" in text and "reason:" in text and "notes.txt" not in text


def test_search_defaults_to_the_hybrid_retriever(built: Path) -> None:
    def hits(*extra: str) -> list[tuple[str, float]]:
        result = _cli("search", "boiler room key", "--collection", "kb", "--json", *extra, data_dir=built)
        assert result.exit_code == 0, result.output
        return [(h["id"], h["score"]) for h in json.loads(result.stdout)]

    default = hits()
    assert default == hits("--retriever", "hybrid")  # as ask, the API and the playground
    assert default != hits("--retriever", "clip")


def test_an_architecture_without_weights_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _corpus(tmp_path / "corpus")
    data = tmp_path / "data"
    result = _cli("ingest", str(corpus), "--clip-model", "ViT-B-16", data_dir=data)
    assert result.exit_code == 2, result.output
    assert "--clip-pretrained" in result.stderr and "--random-weights" in result.stderr
    assert not data.exists()  # refused before anything was built

    # On purpose, it builds (a benchmark's throughput), and the banner says what it is.
    # The smallest standard architecture, in fp32: building a B-32 and timing a random model's
    # numerics (auto) was most of this test's 17-22 s, and neither is what it checks.
    monkeypatch.setenv("MMRAG_CLIP__PRECISION", "fp32")
    result = _cli("ingest", str(corpus / "notes.txt"), "--clip-model", "ViT-S-32", "--random-weights", data_dir=data)
    assert result.exit_code == 0, result.output
    assert "CLIP ViT-S-32 (random weights)" in result.stderr


def test_ingest_json_gives_each_files_outcome(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    (corpus / "broken.png").write_bytes(b"not an image")
    (corpus / "sheet.xyz").write_text("no loader for this")
    (corpus / "records.jsonl").write_text(json.dumps({"_id": "r1", "text": "Lantern record one."}) + "\n{bad json\n")
    data = tmp_path / "data"

    def outcomes() -> dict[str, dict]:
        result = _cli("ingest", str(corpus), "--json", data_dir=data)
        assert result.exit_code == EXIT_PARTIAL, result.output
        return {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}

    first = outcomes()
    assert {name: f["outcome"] for name, f in first.items()} == {
        "notes.txt": "indexed", "guide.md": "indexed", "red.png": "indexed", "records.jsonl": "indexed",
        "broken.png": "failed", "sheet.xyz": "skipped"}
    assert "not a format Pillow recognises" in first["broken.png"]["reason"]
    assert "unsupported" in first["sheet.xyz"]["reason"]
    assert first["records.jsonl"]["documents"] == 1 and first["records.jsonl"]["problems"][0]["line"] == "2"

    (corpus / "notes.txt").write_text("The lift on the west side was serviced on Friday.\n")
    again = outcomes()
    assert {name: f["outcome"] for name, f in again.items()} == {
        "notes.txt": "indexed", "guide.md": "unchanged", "red.png": "unchanged", "records.jsonl": "unchanged",
        "broken.png": "failed", "sheet.xyz": "skipped"}
    assert "unchanged since last run" in again["broken.png"]["reason"]


def test_ingest_off_a_terminal_prints_progress_lines(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    result = _cli("ingest", str(corpus), "--progress-every", "0.1", data_dir=tmp_path / "data")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("ingest: ")]
    assert lines and all(re.match(r"ingest: \d/3 files", line) for line in lines), result.stderr


class _Gate:
    """An engine that finishes files one at a time, each when the test lets it (unit test of the progress)."""

    name = "gate"
    startup_seconds = 0.0

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)

    def describe(self) -> dict[str, float]:
        return {}

    def run(self, tasks, indexer):  # type: ignore[no-untyped-def]
        from mmrag.indexing.steps import FileResult

        for task in tasks:
            self.go.acquire()
            yield FileResult(task.ref, digest="x")


def _terminal(columns: int = 120) -> tuple[int, int]:
    """A pseudo-terminal (master, slave) of a real terminal's width."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    return master, slave


def _drive(stream, every: float) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Run a Progress over three files; yields after each file ends, while the next one is in work."""
    from mmrag.cli.progress import FileWatch, Progress
    from mmrag.loaders import FileRef
    from mmrag.indexing.steps import FileTask

    refs = [FileRef(Path(f"/c/{n}"), Path("/c"), n, ".txt") for n in ("a.txt", "b.txt", "c.txt")]
    gate = _Gate()
    watch = FileWatch(gate, refs)
    with Progress(watch, stream, every=every) as progress:
        progress(0, 3)
        results = watch.run([FileTask(r) for r in refs], None)
        for done in range(1, 4):
            gate.go.release()
            next(results)
            progress(done, 3)
            yield refs[done].doc_id if done < 3 else ""


def test_progress_lines_name_the_file_in_work_every_few_seconds(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("w") as stream:
        for in_work in _drive(stream, every=0.05):
            time.sleep(0.5)  # a slow file: lines keep coming, naming it
            if in_work:
                assert log.read_text().splitlines()[-1].endswith(f"; on {in_work}"), log.read_text()
    assert re.search(r"^ingest: 3/3 files, [0-9.]+ files/s over \d+s", log.read_text(), re.M)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_on_a_terminal_names_the_file_in_work() -> None:
    master, slave = _terminal()
    seen = b""

    def read() -> bytes:
        out = b""
        while select.select([master], [], [], 0.1)[0]:
            out += os.read(master, 65536)
        return out

    with os.fdopen(slave, "w") as stream:
        for in_work in _drive(stream, every=5):
            if in_work:
                time.sleep(2.5)  # longer than the redraw: the bar shows the file even if no update drew it
                seen = read()
                assert in_work.encode() in seen, seen
        assert b"3/3" in read()  # the bar's last state, drawn as it closes
    os.close(master)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.long  # 18 s: an ingest under a pseudo-terminal
def test_ingest_on_a_terminal_draws_a_bar(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    master, slave = _terminal()
    env = {**os.environ, "MMRAG_DATA_DIR": str(tmp_path / "data"), "MMRAG_PROFILE": "offline",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "ingest", str(corpus)], env=env, stdout=subprocess.PIPE,
                            stderr=slave, text=True)
    os.close(slave)
    drawn = b""
    while True:
        ready = select.select([master], [], [], 1)[0]
        if ready:
            try:
                drawn += os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0, out
    assert re.search(rb"ingest: 100%.*3/3", drawn), drawn[-2000:]
    assert "indexed 3" in out


def test_serve_refuses_a_port_in_use_before_starting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "MMRAG_DATA_DIR": str(tmp_path / "data"),
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--no-auth",
                               "--port", str(port)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"port {port} on 127.0.0.1 is in use; pass --port or stop the other process" in done.stderr
    assert "Errno 98" not in done.stderr and "startup complete" not in done.stderr.lower()
    assert time.monotonic() - started < 60  # refused before the app and its models load


def test_load_workers_is_the_local_engines_and_the_summary_says_how_many_ran(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    refused = _cli("ingest", str(corpus), "--engine", "ray", "--load-workers", "2", data_dir=tmp_path / "data")
    assert refused.exit_code == 2 and "--load-workers is the local engine's" in refused.output
    here = _cli("ingest", str(corpus), "--load-workers", "0", "--json", data_dir=tmp_path / "data")
    assert here.exit_code == 0, here.output
    assert json.loads(here.stdout)["workers"]["load"] == 0
