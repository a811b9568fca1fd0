"""Hypothesis strategies for the knowledge-base state machine: file names, texts, edits, corruptions.

Texts are drawn from a small vocabulary, so BM25 queries built from it match many documents; the
state machine puts a unique marker word in front of every version of every text, so a query for
one version's marker finds that version and nothing else (or nothing, once it is gone).
"""

from __future__ import annotations

import hypothesis.strategies as st

#: Prose words; none is a stopword, and each survives the stemmer as its own token.
VOCAB = ("lantern", "river", "stone", "harbour", "willow", "copper", "meadow", "signal", "orchard",
         "thunder", "velvet", "granite", "compass", "ember", "falcon", "glacier")
TEXT_FILES = ("a.txt", "b.md", "sub/c.txt", "sub/deep/f.md")
JSONL_FILES = ("d.jsonl", "sub/e.jsonl")
FILE_NAMES = TEXT_FILES + JSONL_FILES
#: Letters of marker words: no vowel, 'l', 's' or 'y', so the Snowball stemmer strips no suffix.
_MARKER_LETTERS = "bcdfghjkmnpqrtvwxz"
#: Bytes that make a text file binary to the loader (NULs and other control bytes).
BINARY_PREFIX = b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10" * 4


def marker(n: int) -> str:
    """The ``n``-th marker word ("qzbbbb", "qzbbbc", ...): unique, and one BM25 token."""
    letters = []
    for _ in range(4):
        n, r = divmod(n, len(_MARKER_LETTERS))
        letters.append(_MARKER_LETTERS[r])
    assert n == 0, "ran out of marker words"
    return "qz" + "".join(reversed(letters))


#: Bodies of one chunk, and now and then of two or three (a chunk is 200 tokens).
bodies = st.one_of(st.integers(1, 40), st.integers(190, 480)).flatmap(
    lambda n: st.lists(st.sampled_from(VOCAB), min_size=n, max_size=n).map(" ".join))

#: A JSONL file's records (their texts; ids are given by the state machine).
jsonl_bodies = st.lists(bodies, min_size=1, max_size=4)

#: What an edit does to each existing line of a JSONL file.
line_edits = st.sampled_from(["keep", "change", "drop"])

#: How a JSONL line is broken: bytes that are not UTF-8, or text that is not JSON.
broken_lines = st.sampled_from([b'{"_id": "\xff\xfe broken', b"{not json at all", b'["an", "array"]'])

#: Bytes that replace a text file when it is corrupted.
binary_tails = st.binary(max_size=48).map(lambda tail: BINARY_PREFIX + tail)
