from hypothesis import given, settings
from hypothesis import strategies as st

from mmrag.chunking import ChunkSpec, SentenceChunker
from mmrag.errors import InvalidInputError
from mmrag.types import TextBlock

import pytest

CHUNKER = SentenceChunker(ChunkSpec(size=32, overlap=8))
words = st.text(alphabet="abcdefgh ", min_size=1, max_size=12)
sentences = st.lists(st.builds(lambda w: w.strip().capitalize() + ".", words), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(sentences)
def test_offsets_point_at_the_chunk_text(parts: list[str]) -> None:
    text = " ".join(parts)
    for chunk in CHUNKER.chunk("d", [TextBlock(text, page=3)]):
        assert text[chunk.start:chunk.end] == chunk.text
        assert chunk.page == 3 and chunk.doc_id == "d"


@settings(max_examples=60, deadline=None)
@given(sentences)
def test_every_word_is_covered(parts: list[str]) -> None:
    text = " ".join(parts)
    chunks = CHUNKER.chunk("d", [TextBlock(text)])
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and i not in covered]
    assert missing == []


def test_long_text_is_split_with_overlap_and_indexed_in_order() -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(200))
    chunks = SentenceChunker(ChunkSpec(size=64, overlap=16)).chunk("d", [TextBlock(text)])
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:])), "consecutive chunks overlap"


def test_pages_are_never_mixed() -> None:
    chunks = CHUNKER.chunk("d", [TextBlock("Page one text.", 1), TextBlock("   ", 2), TextBlock("Page three.", 3)])
    assert [(c.page, c.text) for c in chunks] == [(1, "Page one text."), (3, "Page three.")]


@pytest.mark.parametrize("size,overlap", [(8, 0), (64, 64), (64, -1)])
def test_bad_chunk_spec_is_refused(size: int, overlap: int) -> None:
    with pytest.raises(InvalidInputError):
        ChunkSpec(size=size, overlap=overlap)


texts = st.lists(st.sampled_from(list("ab c.\n!?,;:'\"-") + ["\n\n", "\n\n\n", "  ", "Dr.", "e.g.", "3.5", "word"]),
                 min_size=1, max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_a_block_that_fits_is_chunked_as_the_splitter_would(text: str) -> None:
    # The fast path for blocks that fit must be exactly what SentenceSplitter returns for them.
    chunker = SentenceChunker(ChunkSpec(size=32, overlap=8))
    if not text.strip():
        return
    from mmrag.chunking import count_tokens

    expected = [p.strip() for p in chunker._splitter.split_text(text) if p.strip()]
    got = [c.text for c in chunker.chunk("d", [TextBlock(text)])]
    if len(count_tokens(text)) <= 32:
        assert got == expected == [text.strip()]
    assert got == expected
