"""Searcher filters, dedupe and fusion on real Chroma with the hashing fake embedders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmrag import retrieval
from mmrag.config import Settings
from mmrag.errors import InvalidInputError
from mmrag.indexing import Indexer
from mmrag.retrieval import SearchFilter, Searcher, rrf, rrf_documents
from mmrag.types import Hit, ImageAsset, Query
from tests.conftest import SAMPLE_CORPUS

RETRIEVERS = ["clip", "text", "bm25", "hybrid"]
#: Every text record holds one of these words (the PDF pages open with "Signs catalogue"), so BM25
#: ranks all of them and the filters alone decide.
Q = Query(text="lantern sign")


@pytest.fixture
def kb(hashing_kb, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Ten text files under docs/ (two of them long, several chunks), one under other/, a
    Markdown file, a two-page PDF with an image, a PNG, and a JSONL with metadata fields."""
    root = tmp_path / "corpus"
    (root / "docs").mkdir(parents=True)
    (root / "other").mkdir()
    for i in range(10):
        body = " ".join(f"Lantern note {i} sentence {j} about lamps and wicks." for j in range(80 if i < 2 else 1))
        (root / "docs" / f"d{i}.txt").write_text(body + "\n")
    (root / "other" / "far.txt").write_text("A lone lantern far away from the rest.\n")
    (root / "docs" / "guide.md").write_text("# Guide\n\nHow to light a lantern safely.\n")
    shutil.copy(SAMPLE_CORPUS / "signs-catalogue.pdf", root / "catalogue.pdf")
    Image.new("RGB", (32, 32), "red").save(root / "red.png")
    rows = [{"_id": "r1", "text": "Lantern fair in spring.", "lang": "en", "year": 2020, "fresh": True},
            {"_id": "r2", "text": "Laternenfest lantern im Herbst.", "lang": "de", "year": 2021, "fresh": False}]
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = Indexer(hashing_kb).ingest([root])
    assert not summary.failed, summary.failed
    hashing_kb.corpus = root  # type: ignore[attr-defined]
    return hashing_kb


def _all_meta(kb) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m for _, m, _ in kb.bare_store("clip").iter_all()]


def _expected_docs(kb, keep, retriever: str) -> set[str]:  # type: ignore[no-untyped-def]
    """Documents holding a record the retriever can return and ``keep`` accepts."""
    metas = _all_meta(kb)
    if retriever in ("text", "bm25"):
        metas = [m for m in metas if m["modality"] == "text"]
    return {m["doc_id"] for m in metas if keep(m)}


CASES = {
    "source_prefix": (lambda root: SearchFilter(source_prefix=str(root / "other") + "/"),
                      lambda root: lambda m: m["source"].startswith(str(root / "other") + "/")),
    "doc_type": (lambda root: SearchFilter(doc_type="md"), lambda root: lambda m: m["doc_type"] == "markdown"),
    "page": (lambda root: SearchFilter(page=2), lambda root: lambda m: m.get("page") == 2),
    "metadata_str": (lambda root: SearchFilter(metadata={"lang": "de"}), lambda root: lambda m: m.get("lang") == "de"),
    "metadata_int": (lambda root: SearchFilter(metadata={"year": 2020}), lambda root: lambda m: m.get("year") == 2020),
    "metadata_bool": (lambda root: SearchFilter(metadata={"fresh": False}), lambda root: lambda m: m.get("fresh") is False),
    "combined": (lambda root: SearchFilter(source_prefix=str(root), doc_type="jsonl", metadata={"lang": "en", "year": 2020}),
                 lambda root: lambda m: m["doc_type"] == "jsonl" and m.get("lang") == "en" and m.get("year") == 2020),
}


@pytest.mark.parametrize("retriever", RETRIEVERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_filter_applies_to_every_retriever(kb, retriever: str, case: str) -> None:  # type: ignore[no-untyped-def]
    make, keep = CASES[case]
    filters, accept = make(kb.corpus), keep(kb.corpus)
    hits = Searcher(kb).search(Q, 50, retriever=retriever, filters=filters)
    assert all(accept(dict(h.metadata)) for h in hits), [h.id for h in hits]
    expected = _expected_docs(kb, accept, retriever)
    assert expected, "the case must select something"
    assert {h.doc_id for h in hits} == expected


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_filters_return_k_hits_even_when_the_unfiltered_top_k_misses(kb, retriever: str) -> None:  # type: ignore[no-untyped-def]
    # d0 and d1 hold ~30 chunks each, more than k: excluding them must still leave k hits.
    filters = SearchFilter(source_prefix=str(kb.corpus / "docs") + "/")
    hits = Searcher(kb).search(Q, 5, retriever=retriever, filters=filters, modality="text")
    assert len(hits) == 5
    assert all(h.source.startswith(str(kb.corpus / "docs") + "/") for h in hits)


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_broad_source_prefix_is_checked_on_overfetched_hits(kb, retriever: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(retrieval, "MAX_IN_IDS", 0)  # force the over-fetch path
    prefix = str(kb.corpus / "docs") + "/"
    hits = Searcher(kb).search(Q, 40, retriever=retriever, filters=SearchFilter(source_prefix=prefix), dedupe=True)
    assert {h.doc_id for h in hits} == _expected_docs(kb, lambda m: m["source"].startswith(prefix), retriever)


def test_prefix_matching_nothing_returns_nothing_and_matching_everything_is_no_filter(kb) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    assert searcher.search(Q, 5, retriever="hybrid", filters=SearchFilter(source_prefix="/nowhere/")) == []
    everything = SearchFilter(source_prefix=str(kb.corpus))
    assert searcher.search(Q, 7, retriever="text", filters=everything) == searcher.search(Q, 7, retriever="text")


def test_filters_combine_with_modality_and_raw_where(kb) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    pdf = SearchFilter(doc_type="pdf")
    images = searcher.search(Q, 10, retriever="clip", modality="image", filters=pdf)
    assert [(h.doc_id, h.modality, h.page) for h in images] == [("catalogue.pdf", "image", 2)]
    hits = searcher.search(Q, 10, retriever="bm25", filters=pdf, where={"page": {"$gte": 2}})
    assert {(h.doc_id, h.page) for h in hits} == {("catalogue.pdf", 2)}
    assert searcher.search(Q, 10, retriever="hybrid", modality="image", filters=SearchFilter(doc_type="jsonl")) == []


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_dedupe_returns_k_distinct_documents(kb, retriever: str) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    plain = searcher.search(Q, 12, retriever=retriever, modality="text")
    hits = searcher.search(Q, 12, retriever=retriever, modality="text", dedupe=True)
    assert len(hits) == 12 and len({h.doc_id for h in hits}) == 12
    if retriever != "hybrid":  # a single list: each document's first hit, in order
        assert [h.id for h in hits][:3] == [h.id for h in retrieval.dedupe_documents(plain)][:3]
    assert searcher.search_documents(Q, 12, retriever=retriever, modality="text") == hits


def test_dedupe_with_filters_still_fills_k(kb) -> None:  # type: ignore[no-untyped-def]
    filters = SearchFilter(doc_type="txt")
    hits = Searcher(kb).search(Q, 11, retriever="bm25", filters=filters, dedupe=True)
    assert sorted(h.doc_id for h in hits) == sorted([f"docs/d{i}.txt" for i in range(10)] + ["other/far.txt"])


def test_bm25_filter_matches_chroma_on_the_same_where(kb) -> None:  # type: ignore[no-untyped-def]
    """tantivy evaluates a where translated from Chroma's; it must select exactly what Chroma selects."""
    text_store = kb.bare_store("text")
    assert len(kb.keyword.query(Q.text, 1000)) == text_store.count()  # Q matches every text record
    wheres = [{"page": 1}, {"page": 1.0}, {"fresh": True}, {"year": {"$gt": 2020}}, {"lang": {"$ne": "en"}},
              {"lang": {"$nin": ["en", "de"]}}, {"doc_type": {"$in": ["markdown", "jsonl"]}},
              {"$or": [{"lang": "de"}, {"doc_type": "pdf"}]}, {"$and": [{"doc_type": "jsonl"}, {"year": {"$lte": 2020}}]},
              {"doc_id": {"$in": ["r1", "docs/guide.md"]}}, {"lang": {"$nin": ["de"]}}, {"year": {"$in": [2021, 2022]}}]
    for where in wheres:
        chroma = set(text_store._col.get(where=where, include=[])["ids"])
        assert {h.id for h in kb.keyword.query(Q.text, 1000, where=where)} == chroma, where


@pytest.mark.parametrize("bad, field", [
    ({"source_prefix": ""}, "source_prefix"), ({"source_prefix": 3}, "source_prefix"),
    ({"doc_type": "spreadsheet"}, "doc_type"), ({"doc_type": 1}, "doc_type"),
    ({"page": 0}, "page"), ({"page": "2"}, "page"), ({"page": True}, "page"),
    ({"metadata": ["lang"]}, "metadata"), ({"metadata": {"lang": None}}, "metadata.lang"),
    ({"metadata": {"$and": 1}}, "metadata"), ({"metadata": {"x": float("nan")}}, "metadata.x"),
    ({"metadata": {"x": [1]}}, "metadata.x"),
])
def test_bad_filters_name_their_field(bad: dict, field: str) -> None:
    with pytest.raises(InvalidInputError, match=field.replace(".", r"\.")):
        SearchFilter(**bad)
    with pytest.raises(InvalidInputError, match=field.replace(".", r"\.")):
        SearchFilter.from_dict(bad)


def test_from_dict_refuses_unknown_keys_and_reads_the_rest() -> None:
    with pytest.raises(InvalidInputError, match="'pages'"):
        SearchFilter.from_dict({"pages": 2})
    f = SearchFilter.from_dict({"doc_type": "JPG", "page": 3, "metadata": {"lang": "en"}, "source_prefix": None})
    assert f == SearchFilter(doc_type="image", page=3, metadata={"lang": "en"})
    assert hash(f) == hash(SearchFilter(doc_type="image", page=3, metadata={"lang": "en"}))
    assert f.where() == {"$and": [{"lang": "en"}, {"doc_type": "image"}, {"page": 3}]}
    assert SearchFilter.from_dict(None).is_empty and SearchFilter().where() is None
    with pytest.raises(TypeError):
        f.metadata["lang"] = "de"  # type: ignore[index]


def test_search_validates_its_arguments(kb) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(kb)
    with pytest.raises(InvalidInputError, match="filters"):
        searcher.search(Q, filters={"page": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"\$regex"):
        searcher.search(Q, retriever="bm25", where={"text": {"$regex": "x"}})
    with pytest.raises(InvalidInputError, match="k must"):
        searcher.search(Q, 0)
    with pytest.raises(InvalidInputError, match="Unknown fusion weight 'bm26'"):
        Searcher(kb, weights={"bm26": 1})
    with pytest.raises(InvalidInputError, match="weights.text"):
        Searcher(kb, weights={"text": -1})
    with pytest.raises(InvalidInputError, match="above 0"):
        Searcher(kb, weights={"clip": 0, "text": 0, "bm25": 0})


def test_weights_come_from_settings(kb, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MMRAG_RETRIEVAL__WEIGHTS__CLIP", "0.25")
    monkeypatch.setenv("MMRAG_RETRIEVAL__DEPTH", "40")
    s = Settings()
    searcher = Searcher.from_settings(kb, s.retrieval)
    assert searcher.weights == {"clip": 0.25, "text": 1.0, "bm25": 1.0} and searcher.depth == 40
    assert Searcher(kb).weights == {"clip": 1.0, "text": 1.0, "bm25": 1.0}


def test_hybrid_text_query_takes_only_images_from_clip(kb, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    asked: list[tuple[str, str]] = []

    def spy(searcher: Searcher) -> None:
        real = searcher._fetcher
        monkeypatch.setattr(searcher, "_fetcher", lambda name, q, modality, where, *rest: asked.append((name, modality))
                            or real(name, q, modality, where, *rest))

    searcher = Searcher(kb)
    spy(searcher)
    searcher.search(Q, 5, retriever="hybrid")
    assert sorted(asked) == [("bm25", "all"), ("clip", "image"), ("text", "all")]
    asked.clear()
    searcher.search(Q, 5, retriever="hybrid", modality="text")
    assert [name for name, _ in asked] == ["text", "bm25"]
    asked.clear()
    with_image = Query(text="lantern", image=ImageAsset(path=str(kb.corpus / "red.png")))
    searcher.search(with_image, 5, retriever="hybrid")
    assert ("clip", "all") in asked
    only_clip = Searcher(kb, weights={"clip": 1, "text": 0, "bm25": 0})
    spy(only_clip)
    asked.clear()
    assert len(only_clip.search(Q, 5, retriever="hybrid", modality="text")) == 5 and asked == [("clip", "text")]


def _hit(rid: str, doc: str) -> Hit:
    return Hit(id=rid, doc_id=doc, source="", modality="text", score=0.0)


def test_rrf_ties_go_to_bm25_then_text_and_documents_vote_once() -> None:
    text = [_hit("a#t0", "a"), _hit("a#t1", "a"), _hit("b#t0", "b")]
    bm25 = [_hit("c#t0", "c"), _hit("b#t0", "b")]
    weights = {"clip": 1.0, "text": 1.0, "bm25": 1.0}
    fused = [h.id for h in rrf({"text": text, "bm25": bm25}, weights)]
    assert fused[:2] == ["b#t0", "c#t0"]  # b: two votes; c and a#t0 tie at rank 1, BM25's wins
    docs = rrf_documents({"text": text, "bm25": bm25}, weights)
    assert [h.doc_id for h in docs] == ["b", "c", "a"]
    k = retrieval.RRF_K
    assert docs[0].score == pytest.approx(2 / (k + 2))  # b is text's 2nd document and BM25's 2nd
    assert docs[2].score == pytest.approx(1 / (k + 1))  # a votes once, though two of its chunks are listed


def test_cli_search_filters_and_dedupe(kb) -> None:  # type: ignore[no-untyped-def]
    """The CLI over BM25 (no model is loaded for it, so the hashing-built index serves)."""
    from click.testing import CliRunner

    from mmrag.cli import main

    base = ["--retriever", "bm25", "--data-dir", str(kb.data_dir), "--collection", kb.collection, "--json",
            "--profile", "offline"]

    def run(*args: str) -> list[dict]:
        result = CliRunner().invoke(main, ["search", "lantern sign", *base, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert {h["doc_id"] for h in run("--meta", "lang=de")} == {"r2"}
    assert {h["doc_id"] for h in run("--meta", "year=2020", "--meta", "fresh=true")} == {"r1"}
    assert run("--meta", 'year="2020"') == []  # stored as a number, so the text "2020" does not match
    assert {(h["doc_id"], h["page"]) for h in run("--doc-type", "pdf", "--page", "1")} == {("catalogue.pdf", 1)}
    assert {h["doc_id"] for h in run("--source-prefix", str(kb.corpus / "other") + "/")} == {"other/far.txt"}
    hits = run("--dedupe", "--k", "4", "--doc-type", "txt")
    assert len(hits) == 4 and len({h["doc_id"] for h in hits}) == 4
    bad = CliRunner().invoke(main, ["search", "lantern", *base, "--doc-type", "sheet"])
    assert bad.exit_code == 1 and "doc_type" in bad.output
    bad = CliRunner().invoke(main, ["search", "lantern", *base, "--meta", "novalue"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_cli_eval_retrieval_weights(kb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--weights reaches the fusion (text and CLIP at 0 leave BM25 alone, so no model loads)."""
    from click.testing import CliRunner

    from mmrag.cli import main

    dataset = tmp_path / "ds.jsonl"
    dataset.write_text(json.dumps({"id": "1", "query": "lantern fair spring", "relevant": ["r1"]}) + "\n")
    base = ["eval", "retrieval", str(dataset), "--retriever", "hybrid", "--data-dir", str(kb.data_dir),
            "--collection", kb.collection, "--profile", "offline", "--json"]
    result = CliRunner().invoke(main, [*base, "--weights", "clip=0, text=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fusion"] == {"weights": {"clip": 0.0, "text": 0.0, "bm25": 1.0}, "rrf_k": retrieval.RRF_K, "depth": 100}
    assert report["metrics"]["mrr"] == 1.0
    bad = CliRunner().invoke(main, [*base, "--weights", "bm26=1"])
    assert bad.exit_code == 1 and "bm26" in bad.output
    bad = CliRunner().invoke(main, [*base, "--weights", "text"])
    assert bad.exit_code == 2 and "NAME=NUMBER" in bad.output
