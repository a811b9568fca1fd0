"""Real open_clip (the offline model), real MiniLM, real Chroma, real files: the sample corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.errors import EmbedderMismatchError
from mmrag.indexing import Indexer
from mmrag.kb import KnowledgeBase
from mmrag.retrieval import Searcher
from mmrag.stores.chroma import ChromaStore
from mmrag.types import ImageAsset, Query
from tests.conftest import SAMPLE_CORPUS

pytestmark = pytest.mark.slow


@pytest.fixture
def sample_kb(offline_kb: KnowledgeBase) -> KnowledgeBase:
    summary = Indexer(offline_kb).ingest([SAMPLE_CORPUS])
    assert summary.failed == [] and summary.indexed == 8
    return offline_kb


def test_text_query_finds_the_image(sample_kb: KnowledgeBase) -> None:
    hits = Searcher(sample_kb).search(Query(text="a red circle"), 1, modality="image")
    assert hits[0].doc_id == "images/red-circle.png" and hits[0].modality == "image"


def test_image_query_finds_the_same_shape(sample_kb: KnowledgeBase) -> None:
    query = Query(image=ImageAsset(path=str(SAMPLE_CORPUS / "images" / "yellow-triangle.png")))
    hits = Searcher(sample_kb).search(query, 2, modality="image")
    assert hits[0].doc_id == "images/yellow-triangle.png"


def test_pdf_pages_and_embedded_images_are_cited(sample_kb: KnowledgeBase) -> None:
    hits = Searcher(sample_kb).search(Query(text="photo-luminescent exit sign price"), 3, retriever="text")
    top = hits[0]
    assert (top.doc_id, top.page) == ("signs-catalogue.pdf", 2)
    assert top.text and "Photo-luminescent" in top.text
    images = [h for h in Searcher(sample_kb).search(Query(text="a blue rectangle"), 10, modality="image")
              if h.doc_id == "signs-catalogue.pdf"]
    assert images and images[0].page == 2


def test_every_retriever_answers_and_hybrid_fuses(sample_kb: KnowledgeBase) -> None:
    searcher = Searcher(sample_kb)
    q = Query(text="When does the building close on weekdays?")
    for retriever in ("text", "bm25", "hybrid"):
        assert searcher.search(q, 3, retriever=retriever)[0].doc_id == "visitor-faq.html", retriever


def test_another_model_is_refused_with_how_to_reindex(sample_kb: KnowledgeBase) -> None:
    other = {**sample_kb.clip.identity(), "weights": "0123456789abcdef"}
    with pytest.raises(EmbedderMismatchError, match="Re-index"):
        ChromaStore(sample_kb.client, sample_kb.clip_name, other)


def test_html_noise_is_dropped(sample_kb: KnowledgeBase) -> None:
    rows = sample_kb.bare_store("text").iter_all(include=("metadatas", "documents"))
    faq = " ".join(t or "" for _, meta, t in rows if meta["doc_id"] == "visitor-faq.html")
    assert "parking" in faq.lower() and "Visitor FAQ" in faq
    assert "console.log" not in faq and "Home | Visitors" not in faq
