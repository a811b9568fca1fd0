"""Issue 8, finding 5: a server killed mid-upload finishes the uploads it left behind when it restarts."""

from __future__ import annotations

from pathlib import Path

from mmrag.indexing import Indexer
from mmrag.manifest import DocState
from tests.http.conftest import make_api


def test_uploads_left_by_a_killed_server_are_indexed_on_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gen = make_api(data, None)
    api = next(gen)
    col = api.col("a")
    assert api.upload("admin", col, ("first.txt", b"The first upload about kites.\n")).status_code == 201
    kb = api.services.kb(col)
    folder = data / "uploads" / col
    # What `kill -9` during a 79-file upload left: files moved into place with no manifest row,
    # and a document marked pending whose records were half written.
    for i in range(5):
        (folder / f"orphan{i}.txt").write_text(f"Orphan upload {i} about balloons.\n")
    (folder / "half.txt").write_text("Half written upload about zeppelins.\n")
    kb.manifest.set_states(kb.collection, [DocState("half.txt", str((folder / "half.txt").resolve()), "txt", "x",
                                                    "pending", "", 0, 0)])
    api.client.__exit__(None, None, None)
    gen.close()

    restarted = next(make_api(data, None))
    kb = restarted.services.kb(col)
    states = {s.doc_id: s.status for s in kb.manifest.all(kb.collection)}
    assert states == {"first.txt": "done", "half.txt": "done", **{f"orphan{i}.txt": "done" for i in range(5)}}
    assert kb.health().problems == []
    assert Indexer(kb).ingest([folder]).indexed == 0  # nothing left to do
