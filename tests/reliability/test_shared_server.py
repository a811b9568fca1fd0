"""Issue 8: two data dirs (or hosts) on one Chroma server never delete each other's records."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from mmrag.config import Settings
from mmrag.embedders.hashing import HashingEmbedder
from mmrag.errors import ForeignCollectionError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.registry import resolve_models
from tests.conftest import SAMPLE_CORPUS


def _kb(data_dir: Path, name: str, url: str) -> KnowledgeBase:
    return KnowledgeBase(data_dir, name, resolve_models(Settings()), store_url=url, clip=HashingEmbedder(16),
                         text=HashingEmbedder(8))


def test_a_second_data_dir_cannot_write_or_repair_away_the_owners_records(tmp_path: Path, shared_chroma_server: str) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    owner = _kb(tmp_path / "host-a", name, shared_chroma_server)
    Indexer(owner).ingest([corpus])
    before = owner.raw_store("clip").count(), owner.raw_store("text").count()
    assert before[0] > 0

    other = _kb(tmp_path / "host-b", name, shared_chroma_server)  # its manifest knows nothing
    with pytest.raises(ForeignCollectionError, match="belongs to another mmrag data dir"):
        Indexer(other).ingest([corpus])  # its repair would have deleted every record as an orphan
    with pytest.raises(ForeignCollectionError):
        other.drop()
    assert (owner.raw_store("clip").count(), owner.raw_store("text").count()) == before
    assert Indexer(owner).ingest([corpus]).unchanged == 8  # the owner carries on as before
    assert owner.raw_store("clip").owner == owner.owner_id != other.owner_id
