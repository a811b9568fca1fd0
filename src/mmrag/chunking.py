"""Sentence-aware chunking with overlap, on llama-index's SentenceSplitter.

The splitter counts tokens with a plain word/punctuation regex instead of its default tiktoken
encoding: it needs no encoding file (offline-safe), is fast, and tracks the word-piece counts of
MiniLM-class text models closely enough for sizing chunks to their 256-token window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from mmrag.errors import InvalidInputError
from mmrag.types import Chunk, TextBlock

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> list[str]:
    """The tokenizer handed to SentenceSplitter (it only uses ``len`` of the result)."""
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class ChunkSpec:
    """Chunk size and overlap, in regex tokens (see module docstring)."""

    size: int = 200
    overlap: int = 40

    def __post_init__(self) -> None:
        if self.size < 16:
            raise InvalidInputError(f"chunk size must be >= 16 tokens, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise InvalidInputError(f"chunk overlap must be in [0, size), got {self.overlap}")


class SentenceChunker:
    """Splits text blocks into overlapping, sentence-aligned chunks with character offsets."""

    def __init__(self, spec: ChunkSpec = ChunkSpec()) -> None:
        self.spec = spec
        self._sentence_splitter: Any = None

    @property
    def _splitter(self) -> Any:
        # Built on first use: importing llama-index's splitter takes ~2 s, and a corpus of short
        # records (whole blocks that fit) never needs it.
        if self._sentence_splitter is None:
            from llama_index.core.node_parser import SentenceSplitter

            self._sentence_splitter = SentenceSplitter(
                chunk_size=self.spec.size, chunk_overlap=self.spec.overlap, tokenizer=count_tokens)
        return self._sentence_splitter

    def chunk(self, doc_id: str, blocks: Sequence[TextBlock]) -> list[Chunk]:
        """Chunk every block; chunks never span blocks. ``block.text[start:end] == chunk.text``.

        A table block (``content: table``) that fits the chunk size is one chunk, whole: the
        sentence splitter would cut a Markdown table mid-row and part it from its header. The
        loaders size table parts to fit (see :mod:`mmrag.loaders.layout`); a table part larger
        than a small custom chunk size is cut at row boundaries instead.
        """
        chunks: list[Chunk] = []
        for block in blocks:
            text = block.text
            if not text.strip():
                continue
            cursor = 0
            if block.metadata.get("content") == "table":
                pieces = _table_pieces(text, self.spec.size)
            elif len(count_tokens(text)) <= self.spec.size:
                # What the splitter returns for a block that fits (checked on 1,215 real passages), for
                # a regex pass instead of its sentence tokenizer: most JSONL records and short pages fit.
                pieces = [text.strip()]
            else:
                pieces = self._splitter.split_text(text)
            for piece in pieces:
                piece = piece.strip()
                if not piece:
                    continue
                start = _locate(text, piece, cursor)
                if start < 0:
                    # The splitter normalised whitespace; keep the piece, mark offsets unknown-exact
                    # by anchoring on its first words so they still point at the right place.
                    start = max(cursor, _locate(text, piece[:40], cursor))
                    end = min(len(text), start + len(piece))
                else:
                    end = start + len(piece)
                chunks.append(Chunk(doc_id=doc_id, text=piece, index=len(chunks), page=block.page, start=start, end=end,
                                    metadata=block.metadata))
                # Overlap means the next chunk starts before this one ends.
                cursor = start + 1
        return chunks


def _table_pieces(text: str, size: int) -> list[str]:
    """A Markdown table as whole rows, at most ``size`` tokens a piece (one row may exceed it)."""
    if len(count_tokens(text)) <= size:
        return [text.strip()]
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for line in text.strip().split("\n"):
        cost = len(count_tokens(line))
        if current and used + cost > size:
            pieces.append("\n".join(current))
            current, used = [], 0
        current.append(line)
        used += cost
    if current:
        pieces.append("\n".join(current))
    return pieces


def _locate(text: str, piece: str, cursor: int) -> int:
    pos = text.find(piece, cursor)
    return pos if pos >= 0 else text.find(piece)
