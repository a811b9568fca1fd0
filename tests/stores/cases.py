"""Records and ``where`` filters shared by the store and keyword-index contract tests.

The expected selections are written out by hand from the records below (and were checked once
against Chroma 1.5.9), so each implementation is held to the same fixed answer rather than to
another implementation's output.
"""

from __future__ import annotations

from typing import Any

from mmrag.embedders.hashing import HashingEmbedder
from mmrag.types import Record

DIM = 8
SOURCE = "/corpus"
_EMBED = HashingEmbedder(DIM)

# (id, doc_id, text, metadata beyond doc_id/source). Keys are left out on purpose (a missing key
# fails every operator but $ne/$nin), page 1.0 is a float, and img's ``fresh`` is the int 1.
_ROWS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("a.txt#t0", "a.txt", "A lantern by the door.", {"page": 1, "lang": "en", "year": 2020, "fresh": True, "doc_type": "txt"}),
    ("a.txt#t1", "a.txt", "The lantern wick burns low.", {"page": 2, "lang": "en", "year": 2020, "fresh": True, "doc_type": "txt"}),
    ("docs/guide.md#t0", "docs/guide.md", "How to light a lantern safely.", {"page": 1.0, "lang": "de", "year": 2021, "doc_type": "markdown"}),
    ("cat.pdf#t0", "cat.pdf", "Signs catalogue: lantern signs.", {"page": 3, "year": 2022, "fresh": False, "doc_type": "pdf"}),
    ("r1", "r1", "Lantern fair in spring.", {"lang": "en", "year": 2019, "fresh": True, "doc_type": "jsonl"}),
    ("r2", "r2", "Laternenfest lantern im Herbst.", {"lang": "de", "year": 2021, "fresh": False, "doc_type": "jsonl"}),
    ("r3", "r3", "Fete de la lanterne, lantern night.", {"lang": "fr", "year": 2020, "page": 1, "doc_type": "jsonl"}),
    ("img (1).png#t0", "img (1).png", "A red lantern picture caption.", {"fresh": 1, "doc_type": "image"}),
    # An image record: no text, modality image (ModalitySplitStore keeps these in a collection of their own).
    ("img (1).png#i0", "img (1).png", "", {"modality": "image", "doc_type": "image", "page": 2}),
]


def records() -> list[Record]:
    """The contract records, with hashing vectors (``source`` under :data:`SOURCE`): text chunks and one image."""
    out = []
    for rid, doc_id, text, meta in _ROWS:
        source = f"{SOURCE}/other/records.jsonl" if meta["doc_type"] == "jsonl" else f"{SOURCE}/{doc_id}"
        full = {"doc_id": doc_id, "source": source, "modality": "text", **meta}
        out.append(Record(rid, _EMBED.embed_texts([text or rid])[0].tolist(), full, text or None))
    return out


def text_records() -> list[Record]:
    """The records a keyword index holds: the text chunks."""
    return [r for r in records() if r.metadata["modality"] == "text"]


ALL = {r[0] for r in _ROWS}
IMAGES = {r[0] for r in _ROWS if r[3].get("modality") == "image"}
TEXTS = ALL - IMAGES
#: Every text above holds "lantern", so a BM25 query for it ranks them all and the filter alone decides.
QUERY = "lantern"

#: The wheres of tests/retrieval/test_retrieval.py::test_bm25_filter_matches_chroma_on_the_same_where,
#: then edge cases of Chroma's semantics, each with the ids it selects.
WHERES: list[tuple[dict[str, Any], set[str]]] = [
    ({"page": 1}, {"a.txt#t0", "docs/guide.md#t0", "r3"}),
    ({"page": 1.0}, {"a.txt#t0", "docs/guide.md#t0", "r3"}),
    ({"fresh": True}, {"a.txt#t0", "a.txt#t1", "r1"}),
    ({"year": {"$gt": 2020}}, {"docs/guide.md#t0", "cat.pdf#t0", "r2"}),
    ({"lang": {"$ne": "en"}}, {"docs/guide.md#t0", "cat.pdf#t0", "r2", "r3", "img (1).png#t0", "img (1).png#i0"}),
    ({"lang": {"$nin": ["en", "de"]}}, {"cat.pdf#t0", "r3", "img (1).png#t0", "img (1).png#i0"}),
    ({"doc_type": {"$in": ["markdown", "jsonl"]}}, {"docs/guide.md#t0", "r1", "r2", "r3"}),
    ({"$or": [{"lang": "de"}, {"doc_type": "pdf"}]}, {"docs/guide.md#t0", "r2", "cat.pdf#t0"}),
    ({"$and": [{"doc_type": "jsonl"}, {"year": {"$lte": 2020}}]}, {"r1", "r3"}),
    ({"doc_id": {"$in": ["r1", "docs/guide.md"]}}, {"r1", "docs/guide.md#t0"}),
    ({"lang": {"$nin": ["de"]}}, {"a.txt#t0", "a.txt#t1", "cat.pdf#t0", "r1", "r3", "img (1).png#t0", "img (1).png#i0"}),
    ({"year": {"$in": [2021, 2022]}}, {"docs/guide.md#t0", "cat.pdf#t0", "r2"}),
    # True != 1 both ways, and the order operators never compare a bool.
    ({"fresh": 1}, {"img (1).png#t0"}),
    ({"fresh": {"$ne": True}}, {"docs/guide.md#t0", "cat.pdf#t0", "r2", "r3", "img (1).png#t0", "img (1).png#i0"}),
    ({"fresh": {"$gt": 0}}, {"img (1).png#t0"}),
    # Order operators compare numbers only: a string value never passes, a missing key never does.
    ({"lang": {"$lt": 5}}, set()),
    ({"page": {"$gte": 2}}, {"a.txt#t1", "cat.pdf#t0", "img (1).png#i0"}),
    ({"page": {"$lt": 2.0}}, {"a.txt#t0", "docs/guide.md#t0", "r3"}),
    ({"year": {"$gte": 2021.0}}, {"docs/guide.md#t0", "cat.pdf#t0", "r2"}),
    ({"lang": {"$ne": 3}}, ALL),
    ({"nokey": {"$nin": ["x"]}}, ALL),
    ({"nokey": "x"}, set()),
    ({"$or": [{"$and": [{"lang": "en"}, {"page": 2}]}, {"year": 2019}]}, {"a.txt#t1", "r1"}),
    # Modality, which ModalitySplitStore answers by picking a collection rather than by filtering.
    ({"modality": "image"}, {"img (1).png#i0"}),
    ({"modality": "text"}, TEXTS),
    ({"$and": [{"modality": "text"}, {"lang": "de"}]}, {"docs/guide.md#t0", "r2"}),
    ({"$and": [{"page": 2}, {"modality": "image"}]}, {"img (1).png#i0"}),
    ({"$and": [{"modality": "image"}, {"doc_type": "image"}, {"fresh": 1}]}, set()),
    ({"modality": {"$ne": "image"}}, TEXTS),
    ({"$or": [{"modality": "image"}, {"doc_id": "r1"}]}, {"img (1).png#i0", "r1"}),
    ({"modality": "video"}, set()),
    ({"$and": [{"modality": "Image"}, {"page": 2}]}, set()),
]

#: Chroma 1.5.9 truncates a float operand toward zero before comparing it with an int value, so
#: ``year: 2020`` equals 2020.5 and ``page: 1`` is not below 1.5. InMemoryStore copies this.
QUIRKS: list[tuple[dict[str, Any], set[str]]] = [
    ({"year": 2020.5}, {"a.txt#t0", "a.txt#t1", "r3"}),
    ({"page": {"$lt": 1.5}}, {"docs/guide.md#t0"}),
    ({"year": {"$in": [2019.9]}}, {"r1"}),
]

#: Wheres Chroma refuses (ChromaStore raises StoreError for them).
REFUSED: list[dict[str, Any]] = [
    {"lang": "en", "year": 2020},  # two keys at the top level
    {"$and": [{"lang": "en"}]},  # $and of one clause
    {"lang": {"$in": []}},
    {"year": {"$in": [2020, 2021.0]}},  # mixed types
    {"year": {"$gt": "2020"}},
    {"fresh": {"$gt": True}},
    {"lang": {"$regex": "e"}},
]
