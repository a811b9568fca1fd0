"""The rerank stage in Searcher.search, on real Chroma with the hashing fakes and a deterministic test reranker.

The reranker here is a test double (the stage's contract is "order by the reranker's score"); real
rerankers (a CrossEncoder from a folder, litellm against a loopback server) are tested in
tests/rerankers/test_rerankers.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Sequence

import pytest
from PIL import Image

from mmrag.config import Settings
from mmrag.errors import ConfigError, InvalidInputError, ModelUnavailableError, UpstreamError
from mmrag.indexing import Indexer
from mmrag.protocols import Reranker
from mmrag.registry import RERANKERS, RerankerPool, build_reranker, wants_rerank
from mmrag.rerank import passage_text, rerank_hits
from mmrag.retrieval import SearchFilter, Searcher
from mmrag.types import Hit, ImageAsset, Query

Q = Query(text="lantern wick")


class HashReranker:
    """Scores a passage by a hash of its text: an order unrelated to any retriever's, so a rerank shows."""

    name = "test:hash"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.calls.append((query, list(passages)))
        return [int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) / 2**32 for p in passages]


class WordReranker:
    """1 for passages holding ``word``, else 0 (ties: the stage must keep the first stage's order)."""

    name = "test:word"

    def __init__(self, word: str) -> None:
        self.word = word

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return [1.0 if self.word in p.lower() else 0.0 for p in passages]


@pytest.fixture
def kb(hashing_kb, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Twelve short lantern notes, one far-away note under other/, titled JSONL records, and three images."""
    root = tmp_path / "corpus"
    (root / "docs").mkdir(parents=True)
    (root / "other").mkdir()
    for i in range(12):
        (root / "docs" / f"d{i}.txt").write_text(f"Lantern note {i}: a wick of {i} mm in a lantern.\n")
    (root / "other" / "far.txt").write_text("A lone lantern with a wick, far away from the rest.\n")
    rows = [{"_id": "r1", "title": "Aspirin and stroke", "text": "Lantern wick trial in spring.", "lang": "en"},
            {"_id": "r2", "title": "Wick makers", "text": "Lantern wick guild records.", "lang": "de"}]
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for colour in ("red", "green", "blue"):
        Image.new("RGB", (32, 32), colour).save(root / f"{colour}.png")
    summary = Indexer(hashing_kb).ingest([root])
    assert not summary.failed, summary.failed
    hashing_kb.corpus = root  # type: ignore[attr-defined]
    return hashing_kb


def _expected(first: list[Hit], reranker: HashReranker, depth: int) -> list[str]:
    """The ids the stage should return: first-stage text hits in the top ``depth`` by score, images in place."""
    head = first[:depth]
    text = [h for h in head if h.modality == "text"]
    scores = reranker.score(Q.text or "", [passage_text(h) for h in text])
    ranked = iter(h for _, h in sorted(zip(scores, text), key=lambda p: -p[0]))
    return [h.id if h.modality == "image" else next(ranked).id for h in head] + [h.id for h in first[depth:]]


@pytest.mark.parametrize("retriever", ["clip", "text", "bm25", "hybrid"])
def test_rerank_orders_the_first_stages_top_hits_by_the_rerankers_score(kb, retriever: str) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    modality = "text" if retriever in ("text", "bm25") else "all"
    first = searcher.search(Q, 8, retriever=retriever, modality=modality)
    reranker = HashReranker()
    hits = searcher.search(Q, 8, retriever=retriever, modality=modality, reranker=reranker, rerank_depth=8)
    assert [h.id for h in hits] == _expected(first, HashReranker(), 8)
    assert [h.id for h in hits] != [h.id for h in first]  # the hash order is not the retriever's
    assert len(reranker.calls) == 1 and reranker.calls[0][0] == Q.text
    by_id = {h.id: h for h in first}
    for hit in hits:
        if hit.modality == "text":
            assert hit.metadata["rerank_score"] == hit.score
            assert hit.metadata["first_stage_score"] == by_id[hit.id].score
        else:
            assert hit.score == by_id[hit.id].score and "rerank_score" not in hit.metadata


def test_depth_bounds_what_is_reread_and_the_rest_keep_their_order(kb) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    first = searcher.search(Q, 10, retriever="text")
    reranker = HashReranker()
    hits = searcher.search(Q, 10, retriever="text", reranker=reranker, rerank_depth=4)
    assert len(reranker.calls[0][1]) == 4
    assert [h.id for h in hits][4:] == [h.id for h in first][4:]
    assert {h.id for h in hits[:4]} == {h.id for h in first[:4]}
    assert [h.id for h in hits] == _expected(first, HashReranker(), 4)


def test_returns_k_of_the_reread_hits_and_fetches_the_depth_first(kb) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    far = WordReranker("far away")
    first = searcher.search(Q, 20, retriever="bm25")
    far_rank = [h.doc_id for h in first].index("other/far.txt")
    assert far_rank >= 2  # the first stage does not put it on top: the rerank must lift it
    hits = searcher.search(Q, 2, retriever="bm25", reranker=far, rerank_depth=20)
    assert len(hits) == 2
    assert hits[0].doc_id == "other/far.txt"
    # Ties (every other passage scores 0) keep the first stage's order.
    assert hits[1].id == first[0].id
    # Below the depth nothing is reread: a depth that stops above it cannot reach it.
    shallow = searcher.search(Q, 2, retriever="bm25", reranker=far, rerank_depth=far_rank)
    assert [h.id for h in shallow] == [h.id for h in first[:2]]


def test_image_hits_keep_their_place_and_score_in_hybrid(kb) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    first = searcher.search(Q, 20, retriever="hybrid", modality="all")
    places = {i: h for i, h in enumerate(first) if h.modality == "image"}
    assert places, "the fixture should put images among the fused hits"
    reranker = HashReranker()
    hits = searcher.search(Q, 20, retriever="hybrid", modality="all", reranker=reranker, rerank_depth=20)
    for i, image in places.items():
        assert hits[i] == image  # same record, same score, same metadata, same place
    assert len(reranker.calls[0][1]) == len(first) - len(places)  # the reranker never sees an image
    # An image-only search has nothing to reread and never calls the reranker.
    images_only = searcher.search(Q, 5, retriever="hybrid", modality="image", reranker=reranker)
    assert all(h.modality == "image" for h in images_only) and len(reranker.calls) == 1


def test_a_query_without_text_is_not_reranked(kb) -> None:  # type: ignore[no-untyped-def]
    reranker = HashReranker()
    image = ImageAsset(path=str(kb.corpus / "red.png"))
    plain = Searcher(kb).search(Query(image=image), 5, retriever="clip")
    hits = Searcher(kb, reranker=reranker).search(Query(image=image), 5, retriever="clip")
    assert hits == plain and reranker.calls == []


@pytest.mark.parametrize("retriever", ["text", "bm25", "hybrid"])
def test_filters_are_still_honoured(kb, retriever: str) -> None:  # type: ignore[no-untyped-def]
    # The reranker wants the far-away note, which the filter excludes: it must not come back.
    searcher = Searcher(kb)
    filters = SearchFilter(source_prefix=str(kb.corpus / "docs") + "/")
    hits = searcher.search(Q, 5, retriever=retriever, filters=filters, reranker=WordReranker("far away"))
    assert len(hits) == 5 and all(h.source.startswith(str(kb.corpus / "docs") + "/") for h in hits)
    only_de = searcher.search(Q, 5, retriever=retriever, filters=SearchFilter(metadata={"lang": "de"}),
                              reranker=HashReranker())
    assert [h.doc_id for h in only_de] == ["r2"]


def test_the_searchers_own_reranker_applies_to_document_search(kb) -> None:  # type: ignore[no-untyped-def]
    # `mmrag eval retrieval --rerank` and `mmrag ask --rerank` rely on this: they set it on the searcher.
    far = WordReranker("far away")
    plain = Searcher(kb).search_documents(Q, 3, retriever="hybrid", modality="text")
    docs = Searcher(kb, reranker=far, rerank_depth=30).search_documents(Q, 3, retriever="hybrid", modality="text")
    assert plain[0].doc_id != "other/far.txt" and docs[0].doc_id == "other/far.txt"
    assert len({h.doc_id for h in docs}) == 3


def test_the_reranker_reads_the_title_and_section_with_the_text(kb) -> None:  # type: ignore[no-untyped-def]
    hits = Searcher(kb).search(Query(text="lantern wick trial"), 20, retriever="bm25")
    r1 = next(h for h in hits if h.doc_id == "r1")
    assert passage_text(r1) == "Aspirin and stroke\n\nLantern wick trial in spring."
    hit = Hit("x", "x", "/x", "text", 0.1, text="pip install", metadata={"section": "Setup > Linux", "title": "Guide"})
    assert passage_text(hit) == "Guide\n\nSetup > Linux\npip install"
    # The stage hands exactly those texts to the reranker.
    reranker = HashReranker()
    Searcher(kb).search(Query(text="lantern wick trial"), 20, retriever="bm25", reranker=reranker, rerank_depth=20)
    assert "Aspirin and stroke\n\nLantern wick trial in spring." in reranker.calls[0][1]


class _Broken:
    name = "test:broken"

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.scores


@pytest.mark.parametrize("scores", [[1.0], [float("nan")] * 3], ids=["too-few", "nan"])
def test_a_reranker_that_breaks_its_contract_is_an_upstream_error(scores: list[float]) -> None:
    hits = [Hit(f"h{i}", f"d{i}", "/d", "text", 1.0 - i / 10, text=f"t{i}") for i in range(3)]
    with pytest.raises(UpstreamError, match="test:broken"):
        rerank_hits(_Broken(scores), "q", hits, depth=3)


class _Reversing:
    """Scores the first stage's order backwards; fused with it by reciprocal rank when ``fuses``."""

    name = "test:reversing"

    def __init__(self, fuses: bool) -> None:
        self.fuses_first_stage = fuses

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return [float(i) for i in range(len(passages))]


def test_a_fusing_reranker_is_combined_with_the_first_stage_by_reciprocal_rank() -> None:
    from mmrag.rerank import FUSE_K

    hits = [Hit(f"h{i}", f"d{i}", "/d", "text", 1.0 - i / 10, text=f"t{i}") for i in range(4)]
    hits.insert(1, Hit("img", "dimg", "/i.png", "image", 0.95))
    replaced = rerank_hits(_Reversing(fuses=False), "q", hits, depth=5)
    assert [h.id for h in replaced] == ["h3", "img", "h2", "h1", "h0"]
    # Fused with a reversed order, h0 and h3 tie at 1/(k+1) + 1/(k+4), above h1 and h2 at 1/(k+2) +
    # 1/(k+3); the first stage breaks the ties.
    fused = rerank_hits(_Reversing(fuses=True), "q", hits, depth=5)
    assert [h.id for h in fused] == ["h0", "img", "h3", "h1", "h2"]
    assert fused[0].score == pytest.approx(1 / (FUSE_K + 1) + 1 / (FUSE_K + 4))
    assert fused[0].metadata["rerank_score"] == 0.0 and fused[0].metadata["first_stage_score"] == 1.0
    assert fused[1].score == 0.95  # the image keeps its place and score

    class _ThirdBest(_Reversing):
        def score(self, query: str, passages: Sequence[str]) -> list[float]:
            return [0.5, 0.0, 1.0, 0.0]  # the reranker's favourite is the first stage's third

    # h0 1/(k+1) + 1/(k+2) stays first; h2 (3rd, then 1st) passes h1 (2nd, then 3rd); h3 stays last.
    fused = rerank_hits(_ThirdBest(fuses=True), "q", hits, depth=5)
    assert [h.id for h in fused if h.modality == "text"] == ["h0", "h2", "h1", "h3"]


def test_bad_depths_are_refused(kb) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="rerank_depth"):
        Searcher(kb).search(Q, 3, reranker=HashReranker(), rerank_depth=0)
    with pytest.raises(InvalidInputError, match="rerank_depth"):
        Searcher(kb, rerank_depth=True)  # type: ignore[arg-type]


def test_the_test_rerankers_satisfy_the_protocol() -> None:
    assert isinstance(HashReranker(), Reranker) and isinstance(WordReranker("x"), Reranker)


# -- the registry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["bm42", "cross-encoder:", "litellm:", "offline:x", "cohere/rerank-v3.5"])
def test_unknown_reranker_names_list_the_known_forms(spec: str) -> None:
    with pytest.raises(ConfigError, match="Known forms: offline, cross-encoder:<hub name or folder>"):
        build_reranker(spec)


def test_a_missing_cross_encoder_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="No cross-encoder folder"):
        build_reranker(f"cross-encoder:{tmp_path / 'nope'}")


def test_a_litellm_reranker_needs_a_provider() -> None:
    with pytest.raises(ConfigError, match="provider prefix"):
        build_reranker("litellm:rerank-v3.5")


def test_none_and_off_turn_the_stage_off() -> None:
    assert not any(wants_rerank(n) for n in (None, "none", "off", " NONE ", ""))
    pool = RerankerPool(Settings(rerank={"model": "none"}))
    assert pool.get(None) is None and pool.get("none") is None and pool.allowed() == []


def test_the_server_pool_offers_only_configured_rerankers() -> None:
    pool = RerankerPool(Settings(rerank={"model": "litellm:cohere/rerank-v3.5"}))
    with pytest.raises(InvalidInputError, match="not a reranker this server offers. Known: none, litellm:cohere"):
        pool.get("cross-encoder:/etc")
    assert pool.get(None) is pool.get("litellm:cohere/rerank-v3.5")  # the default, built once
    assert pool.get("none") is None
    cli = RerankerPool(Settings(), allow_any=True)
    assert cli.get(None) is None and cli.get("litellm:voyage/rerank-2").name == "litellm:voyage/rerank-2"


def test_the_pool_builds_each_reranker_once_under_concurrent_first_requests(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    builds: list[str] = []

    def slow_factory(ref: str, device: str, options: object) -> Reranker:
        builds.append(ref)
        time.sleep(0.02)  # wide enough for every thread to arrive while the first build runs
        return WordReranker(ref)

    monkeypatch.setitem(RERANKERS, "litellm", slow_factory)
    for round_ in range(20):
        builds.clear()
        pool = RerankerPool(Settings(rerank={"model": f"litellm:p/m{round_}", "allowed": ["litellm:p/other"]}))
        got: list[object] = []
        barrier = threading.Barrier(8)

        def worker(i: int) -> None:
            barrier.wait()
            got.append(pool.get(None if i % 2 else "litellm:p/other"))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(builds) == sorted([f"p/m{round_}", "p/other"]), builds
        assert len({id(g) for g in got}) == 2
