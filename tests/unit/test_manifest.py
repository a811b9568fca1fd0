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
