from pathlib import Path

from mmrag.manifest import DocState, Manifest


def test_states_survive_reopen_and_totals_skip_pending(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite3")
    m.set_states("c", [DocState("a", "/a", "txt", "h1", "done", "", 3, 2), DocState("b", "/b", "txt", "h2", "pending", "", 0, 0)])
    m.set_flag("c", "x", "1")
    m.close()
    m = Manifest(tmp_path / "m.sqlite3")
    assert m.get("c", "a") == DocState("a", "/a", "txt", "h1", "done", "", 3, 2)
    assert m.counts("c") == {"done": 1, "pending": 1}
    assert m.totals("c") == (3, 2)
    assert m.flag("c", "x") == "1"
    m.remove("c", ["a"])
    assert m.get("c", "a") is None and m.get("other", "b") is None


CLOSE_RACE = r"""
import sys, threading, time
from pathlib import Path
from mmrag.errors import StoreError
from mmrag.manifest import DocState, Manifest

m = Manifest(Path(sys.argv[1]) / "manifest.db")
m.set_states("c", [DocState(f"d{i}", f"/s/{i}", "text", "h", "done", "", 1, 1) for i in range(3000)])
stop = threading.Event()

def reader():  # a server's background thread (drift scoring) reading while the server shuts down
    while not stop.is_set():
        try:
            # A query that runs a while inside sqlite (the GIL released), as a scan of a big table does.
            m.read("SELECT COUNT(*) FROM documents a JOIN documents b ON a.n_clip = b.n_clip")
        except StoreError:  # a connection closed between two queries: an error, never a crash
            pass

threads = [threading.Thread(target=reader) for _ in range(2)]
for t in threads:
    t.start()
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    m.close()
    time.sleep(0.05)
stop.set()
for t in threads:
    t.join()
print("survived")
"""


def test_close_waits_for_a_query_in_flight_in_another_thread(tmp_path: Path) -> None:
    """close() under another thread's running query crashed the process (SIGSEGV in sqlite)."""
    import subprocess
    import sys

    script = tmp_path / "race.py"
    script.write_text(CLOSE_RACE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "survived" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_a_status_listing_reads_that_status_only_not_every_document(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The repair check lists pending documents before every ingest: its cost must not grow with the
    knowledge base (ORDER BY doc_id made SQLite walk every row: 0.2 s at 1M documents).

    Counted in SQLite virtual-machine steps (a progress handler), not seconds: deterministic.
    """
    def steps_to_list_pending(done: int) -> int:
        m = Manifest(tmp_path / f"m{done}.sqlite3")
        m.set_states("c", [DocState(f"d{i:06d}", f"/s/{i}", "text", "h", "done", "", 1, 1) for i in range(done)])
        m.set_states("c", [DocState(f"p{i}", "/s/p", "text", "h", "pending", "", 0, 0) for i in (2, 0, 1)])
        counted = [0]
        with m._use() as db:
            db.set_progress_handler(lambda: counted.__setitem__(0, counted[0] + 1) or 0, 100)
        listed = [s.doc_id for s in m.all("c", "pending")]
        assert listed == ["p0", "p1", "p2"]  # still ordered by doc id
        assert [s.doc_id for s, _ in m.listing("c", "pending")] == ["p0", "p1", "p2"]
        return counted[0]

    small, large = steps_to_list_pending(100), steps_to_list_pending(20_000)
    assert large <= small * 2 + 10, (small, large)
