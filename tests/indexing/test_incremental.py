"""Issue 9: a write touches only the documents it writes, and an old data dir is migrated in place."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.indexing import steps as pipeline
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from mmrag.retrieval import Searcher
from mmrag.stores.chroma import ChromaStore
from mmrag.stores.tantivy import TantivyKeywordIndex
from mmrag.types import Query
from tests.conftest import SAMPLE_CORPUS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
N_DOCS = 300


class _Spy:
    """Counts what the stores read and what the keyword index writes, by wrapping their methods."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read = 0  # records read back from Chroma
        self.scans = 0  # full scans started
        self.keyword_written: list[str] = []  # record ids added to the keyword index
        self.keyword_deleted: list[str] = []  # doc ids whose keyword rows were deleted
        spy = self

        def counting(name: str) -> Any:
            real = getattr(ChromaStore, name)

            def wrapper(self: ChromaStore, *args: Any, **kwargs: Any) -> Any:
                if name == "iter_all":
                    spy.scans += 1
                for row in real(self, *args, **kwargs):
                    spy.read += 1
                    yield row
            return wrapper

        for name in ("iter_all", "records_of"):
            monkeypatch.setattr(ChromaStore, name, counting(name))
        real_get = ChromaStore.get

        def get(self: ChromaStore, ids: Any) -> Any:
            hits = real_get(self, ids)
            spy.read += len(hits)
            return hits

        monkeypatch.setattr(ChromaStore, "get", get)
        real_write = TantivyKeywordIndex.write

        def write(self: TantivyKeywordIndex, delete_docs: Any = (), records: Any = ()) -> None:
            spy.keyword_deleted += list(delete_docs)
            spy.keyword_written += [r.id for r in records]
            real_write(self, delete_docs, records)

        monkeypatch.setattr(TantivyKeywordIndex, "write", write)


def test_adding_or_deleting_one_document_touches_only_it(hashing_kb, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(N_DOCS):
        (root / f"d{i:03d}.txt").write_text(f"Document {i} is about lanterns number {i}.\n")
    Indexer(hashing_kb).ingest([root])
    assert hashing_kb.keyword.count() == N_DOCS

    spy = _Spy(monkeypatch)
    (root / "new.txt").write_text("A new document about candles.\n")
    summary = Indexer(hashing_kb).ingest([root])
    assert summary.indexed == 1 and summary.unchanged == N_DOCS
    assert spy.keyword_written == ["new.txt#t0"] and spy.keyword_deleted == ["new.txt"]
    assert spy.read == 0 and spy.scans == 0, "an add read records back from Chroma"

    spy.keyword_written.clear(), spy.keyword_deleted.clear()
    assert Indexer(hashing_kb).delete(["d007.txt"]) == 1
    assert spy.keyword_written == [] and spy.keyword_deleted == ["d007.txt"]
    assert spy.read == 0 and spy.scans == 0, "a delete read records back from Chroma"
    assert hashing_kb.keyword.count() == N_DOCS
    assert [h.doc_id for h in Searcher(hashing_kb).search(Query(text="candles"), 3, retriever="bm25")] == ["new.txt"]


def test_unchanged_files_are_not_hashed_again(hashing_kb, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mmrag.indexing import steps as pipeline

    root = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, root)
    Indexer(hashing_kb).ingest([root])
    hashed: list[Path] = []
    real = pipeline.file_sha256
    monkeypatch.setattr(pipeline, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert Indexer(hashing_kb).ingest([root]).indexed == 0
    assert hashed == []
    (root / "maintenance-log.txt").write_text("Changed: the boiler was replaced.\n")
    assert Indexer(hashing_kb).ingest([root]).indexed == 1
    assert [p.name for p in hashed] == ["maintenance-log.txt"]


def test_a_data_dir_of_release_f25dd5a_is_migrated_on_first_open(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The fixture was written by main at f25dd5a (sample corpus, hashing embedders 16/8, collection 'legacy')."""
    with tarfile.open(FIXTURES / "datadir-f25dd5a.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "data"
    assert (data / "bm25" / "legacy" / "mmrag_rows.json").exists()
    # The sources were ingested from the checkout that wrote the fixture; put them at a path of ours.
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    db = sqlite3.connect(data / "manifest.sqlite3")
    db.execute("UPDATE documents SET source = replace(source, '/work/main/ingest/sample_corpus', ?)", (str(corpus),))
    db.commit()
    db.close()
    kb = KnowledgeBase(data, "legacy", resolve_models(Settings()), clip=HashingEmbedder(16), text=HashingEmbedder(8))
    with caplog.at_level(logging.WARNING, logger="mmrag"):
        hits = Searcher(kb).search(Query(text="first-aid kit"), 3, retriever="bm25")
    migrated = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert len(migrated) == 1 and "'legacy'" in migrated[0], caplog.records
    assert hits and hits[0].doc_id == "maintenance-log.txt"  # "a new first-aid kit was installed"
    assert not (data / "bm25" / "legacy").exists()
    assert kb.keyword.count() == kb.bare_store("text").count() == 5
    assert kb.health().problems == []
    # The migrated data dir keeps working: a rerun over the same files computes nothing again.
    again = Indexer(kb).ingest([corpus])
    assert again.clip_embeddings == again.text_embeddings == 0 and again.unchanged == 8, again.to_dict()
