"""KnowledgeBase.write_lock: re-entrant in its thread, exclusive across threads (and processes: flock)."""

from __future__ import annotations

import threading
import time

import pytest


def test_write_lock_is_reentrant_and_exclusive(hashing_kb) -> None:  # type: ignore[no-untyped-def]
    order: list[str] = []
    with hashing_kb.write_lock():
        with hashing_kb.write_lock():  # an ingest with --prune takes it again: must not deadlock
            order.append("nested")

        def other() -> None:
            with hashing_kb.write_lock():
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        order.append("outer done")
    t.join(timeout=10)
    assert order == ["nested", "outer done", "other"]


# -- issue 23, finding 7: a long ingest holds the lock only to write, so a small one is not held behind it ----
from mmrag.embedders.hashing import HashingEmbedder  # noqa: E402


class _PacedHashing(HashingEmbedder):
    """The hashing fake at the pace of a CPU model: ``per_text`` seconds per text embedded."""

    def __init__(self, dim: int, per_text: float) -> None:
        super().__init__(dim)
        self.per_text = per_text

    def embed_texts(self, texts):  # type: ignore[no-untyped-def]
        time.sleep(self.per_text * len(texts))
        return super().embed_texts(texts)


def _paced_kb(root, per_text: float):  # type: ignore[no-untyped-def]
    from mmrag.config import Settings
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models

    return KnowledgeBase(root, "test", resolve_models(Settings()), clip=_PacedHashing(16, per_text),
                         text=HashingEmbedder(8))


def _long_corpus(folder, files: int):  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True)
    for f in range(files):
        sentences = " ".join(f"Sentence {n} of report {f} says the quarterly budget grew by {n % 7} percent." for n in range(300))
        (folder / f"report{f:03d}.txt").write_text(sentences)
    return folder


@pytest.mark.slow
def test_finding7_small_ingests_are_not_held_behind_a_long_one(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmrag.indexing import Indexer, writer

    # The long run's ~1,200 chunks in several batches of several slices (the product's 4 x 1,024
    # would make them one batch, written at the end): small ingests land between batches and slices.
    monkeypatch.setattr(writer, "WRITE_ITEMS", 64)
    kb = _paced_kb(tmp_path / "kb", per_text=0.004)
    corpus = _long_corpus(tmp_path / "long", 40)
    done: dict[str, object] = {}

    def long_run() -> None:
        started = time.monotonic()
        done["summary"] = Indexer(kb).ingest([corpus])
        done["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=long_run)
    worker.start()
    deadline = time.monotonic() + 120
    while not kb.manifest.counts(kb.collection).get("done") and time.monotonic() < deadline:
        time.sleep(0.05)  # until the long run has written its first batch: it is under way, past its start-up
    waits = []
    for i in range(5):  # driven several times: each small ingest lands between the long run's batches
        note = tmp_path / "small" / f"note{i}.txt"
        note.parent.mkdir(exist_ok=True)
        note.write_text(f"Note {i}: the budget meeting moved to Thursday.")
        started = time.monotonic()
        summary = Indexer(kb).ingest([note])
        waits.append(time.monotonic() - started)
        assert summary.indexed == 1 and not summary.failed
    still_running = worker.is_alive()
    worker.join(timeout=300)
    assert still_running, f"the long run ended first ({done.get('seconds')} s): the test proved nothing"
    assert max(waits) < 3.0, f"small ingests waited {[round(w, 1) for w in waits]} s behind a long one"
    # Nothing lost on either side: every document done, and the stores hold what the manifest says.
    assert done["summary"].indexed == 40 and not done["summary"].failed  # type: ignore[attr-defined]
    assert kb.manifest.counts(kb.collection).get("done") == 45
    want_clip, want_text = kb.manifest.totals(kb.collection)
    assert (kb.bare_store("clip").count(), kb.bare_store("text").count(), kb.keyword.count()) == (want_clip, want_text, want_text)


def test_finding7_a_file_replaced_while_it_was_read_is_not_written_over_the_newer_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two runs of one file, the first reading the old bytes: its write must not land after the second's."""
    from mmrag.indexing import Indexer
    from mmrag.indexing.steps import embed_documents

    kb = _paced_kb(tmp_path / "kb", per_text=0.0)
    note = tmp_path / "docs" / "note.txt"
    note.parent.mkdir()
    note.write_text("The old version of the note.")
    gate = threading.Event()
    real = embed_documents

    def slow_embed(loaded, models):  # type: ignore[no-untyped-def]
        if any("old version" in b.text for d in loaded for b in d.doc.texts):
            gate.wait(10)  # the first run has read the old bytes; hold it until the second has written
        return real(loaded, models)

    import mmrag.indexing.engines as engines

    engines.embed_documents = slow_embed  # type: ignore[assignment]
    try:
        first: dict[str, object] = {}
        worker = threading.Thread(target=lambda: first.update(summary=Indexer(kb).ingest([note])))
        worker.start()
        time.sleep(1.0)
        note.write_text("The new version of the note, written while the first run was embedding.")
        second = Indexer(kb).ingest([note])
        gate.set()
        worker.join(timeout=60)
    finally:
        engines.embed_documents = real  # type: ignore[assignment]
    assert second.indexed == 1
    assert any("changed while it was being indexed" in w for w in first["summary"].warnings)  # type: ignore[attr-defined]
    hits = kb.bare_store("text").records_of(["note.txt"], ("metadatas", "documents"))
    assert [doc for _, _, doc in hits] == ["The new version of the note, written while the first run was embedding."]
