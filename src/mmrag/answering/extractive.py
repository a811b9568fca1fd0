"""Extractive answers: the context sentence closest to the question, cited to its block.

A 135M-parameter chat model answers fluently and wrongly (issue 14: 3% of its answers held the right
one). Retrieval, on the other hand, is good, so the offline default answers by *extraction*: the
sentence of the retrieved context that the text model (MiniLM by default) finds closest to the
question, each cited to its block. Headings and questions are never answers (:mod:`mmrag.answering.sentences`
reads the block's lines: a Markdown ``#`` line, a short line that ends no sentence, and a sentence
ending in "?" are left out; issue 25: the demo answered "Visitor FAQ When is the building open?").

The answer is the closest sentence, then a second hop adds the sentence closest to the question
*and that first sentence* (as in multi-hop dense retrieval: "the wife of X" is named in one passage,
her nationality in another; on the HaluEval development set the second hop raised "the answer
contains the reference" from 0.38 to 0.65). With ``Extractor(shorten=True)`` mmrag's offline reader
(:func:`load_reader`) makes it shorter: the sentence it finds answers on its own, alone, and the
answering clause of a long sentence (the span keeps its sentence, :attr:`Sentence.sentence`). It is
off by default: with the reader shipped in issue 25 it cut HaluEval's 0.65 to 0.41.
An extractive answer cannot invent anything and gives a reader the passages' own words.

Whether to answer at all is a separate, calibrated decision: the abstention gate
(:class:`~mmrag.answering.guard.AbstentionGate`) reads the signals an :class:`Extraction` carries
(:meth:`Extraction.features`). The offline hallucination detector's verdict on the answer is applied
after the answer exists (see :mod:`mmrag.answering`): a generated answer it judges hallucinated is
replaced by the extractive one (``auto``) or refused (``generate`` with a verifier).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from mmrag.answering.context import ContextBlock
from mmrag.errors import InvalidInputError, MissingDependencyError, ModelUnavailableError
from mmrag.answering.sentences import answer_sentences, clauses
from mmrag.textanalysis import content_words

if TYPE_CHECKING:
    from mmrag.answering.verification import TextEmbedder

#: The reader's own decision point: it estimates P(the passage answers the question), so a passage
#: or a span "answers" from 0.5 on (equal costs; nothing fitted).
ANSWERS = 0.5

class Reader(Protocol):
    """What the extractor needs from mmrag's offline reader (:class:`mmrag.reader.OfflineReader`)."""

    def answerability(self, question: str, passages: Sequence[str]) -> list[float]: ...


def load_reader(device: str = "cpu") -> Any:
    """mmrag's offline reader, loaded once per process and shared (the CLI's and the server's answerers).

    The reader ships in the package; a missing or damaged copy is an install error, not a reason to
    answer without it (the gate's calibration reads its answerability).

    Raises:
        ModelUnavailableError: the reader's weights cannot be loaded.
    """
    return _load_reader(device)


@functools.lru_cache(maxsize=2)
def _load_reader(device: str) -> Any:
    try:
        from mmrag.reader import OfflineReader
    except ImportError as exc:
        raise MissingDependencyError(f"mmrag's offline reader (mmrag.reader) does not import ({exc}): "
                                     "reinstall mmrag") from exc
    try:
        return OfflineReader.load(device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelUnavailableError(f"mmrag's offline reader cannot be loaded ({exc}); it ships in the package "
                                    "(src/mmrag/reader): reinstall mmrag") from exc


@dataclass(frozen=True)
class Sentence:
    """A sentence (or the span of it that answers) of one context block, and its cosine to the question."""

    block: int  # the block's number (ContextBlock.n)
    text: str
    score: float
    #: The whole sentence when ``text`` is a span of it; empty when ``text`` is the sentence.
    sentence: str = ""


@dataclass(frozen=True)
class Extraction:
    """The best-supported sentences for a question, and the features the gate reads."""

    sentences: tuple[Sentence, ...]  # by cosine to the question, best first
    block_cos: float
    coverage: float
    #: The answer: the best sentence (or its answering span), then the second hop's when there is one.
    chosen: tuple[Sentence, ...] = ()
    #: The reader's P(this block answers the question), per text block in block order (no reader: empty).
    block_answerability: tuple[float, ...] = ()

    @property
    def best(self) -> Sentence:
        return self.sentences[0]

    @property
    def answerability(self) -> float | None:
        """The reader's best P(a block answers the question); None without a reader."""
        return max(self.block_answerability) if self.block_answerability else None

    def features(self) -> dict[str, float]:
        """The gate's inputs, by name (see :data:`~mmrag.answering.guard.FEATURES`; ``answerability`` only with a reader)."""
        out = {"block_cos": self.block_cos, "coverage": self.coverage, "sentence_cos": self.best.score}
        if self.answerability is not None:
            out["answerability"] = self.answerability
        return out


class Extractor:
    """Ranks the sentences of the retrieved text blocks by their cosine to the question.

    Args:
        embedder: unit-norm text vectors (the knowledge base's text model).
        reader: mmrag's offline reader (:func:`load_reader`). With it the extraction carries each
            block's answerability (the gate's main signal).
        shorten: let the reader choose the answer too: of the ``candidates`` sentences closest to
            the question, the one it finds answers best on its own is the answer, alone when it
            does answer, and a long sentence is cut to the clause that answers. Off by default:
            with the reader shipped in issue 25 it lowered "the answer contains the reference" on
            the HaluEval development set from 0.65 to 0.41 (one sentence where two were needed).
        hops: sentences in the answer: 1 (the closest to the question) or 2 (then the closest to
            the question followed by the first; module docstring).
        min_words: sentences with fewer words are not answers ("See also.", a bare heading).
        span_words: a chosen sentence longer than this is cut to its answering clause (with a reader).
        candidates: sentences (closest to the question first) that the reader reads on their own.
    """

    def __init__(self, embedder: TextEmbedder, *, reader: Reader | None = None, hops: int = 2, min_words: int = 3,
                 span_words: int = 30, candidates: int = 4, shorten: bool = False) -> None:
        if hops not in (1, 2):
            raise InvalidInputError(f"hops must be 1 or 2, got {hops}")
        if candidates < 1:
            raise InvalidInputError(f"candidates must be at least 1, got {candidates}")
        self.embedder, self.reader = embedder, reader
        self.hops, self.min_words, self.span_words, self.candidates = hops, min_words, span_words, candidates
        self.shorten = shorten

    @property
    def name(self) -> str:
        """Names the answer's producer, e.g. ``mmrag-extractive/all-MiniLM-L6-v2@<sha256 prefix>``."""
        name = getattr(self.embedder, "weights_id", None) or getattr(self.embedder, "name", type(self.embedder).__name__)
        return f"mmrag-extractive/{name}"

    def extract(self, question: str, blocks: Sequence[ContextBlock]) -> Extraction | None:
        """Rank the sentences of ``blocks`` for ``question``; None when no text block has a sentence."""
        text_blocks = [b for b in blocks if b.hit.modality == "text"]
        units: list[tuple[int, str]] = []
        for b in text_blocks:
            units += [(b.n, s) for s in answer_sentences(b) if len(s.split()) >= self.min_words]
        if not units:
            return None
        vectors = self.embedder.embed_texts([question, *(b.content for b in text_blocks), *(s for _, s in units)])
        q = vectors[0]
        block_cos = float(np.max(vectors[1:1 + len(text_blocks)] @ q))
        scores = vectors[1 + len(text_blocks):] @ q
        order = np.argsort(-scores, kind="stable")
        sentences = tuple(Sentence(units[i][0], units[i][1], float(scores[i])) for i in order)
        wanted = content_words(question)
        coverage = max((len(wanted & content_words(b.content, drop_discourse=False)) / len(wanted) for b in text_blocks),
                       default=0.0) if wanted else 0.0
        per_block: tuple[float, ...] = ()
        first, alone = 0, False  # the answer's first sentence, as a rank in `sentences`
        if self.reader is not None:
            # One call: every block, then the closest sentences each on its own (which answers without the rest?).
            top = sentences[:self.candidates] if self.shorten else ()
            p = [float(x) for x in self.reader.answerability(question, [*(b.content for b in text_blocks),
                                                                        *(s.text for s in top)])]
            per_block, alone_p = tuple(p[:len(text_blocks)]), p[len(text_blocks):]
            best = int(np.argmax(alone_p)) if alone_p else 0
            if alone_p and alone_p[best] >= ANSWERS:
                first, alone = best, True
        chosen = (sentences[first],)
        if self.hops == 2 and len(sentences) > 1 and not alone:
            hop = self.embedder.embed_texts([f"{question} {sentences[first].text}"])[0]
            rest = [int(i) for rank, i in enumerate(order) if rank != first]
            second = max(rest, key=lambda i: (float(vectors[1 + len(text_blocks) + i] @ hop), -rest.index(i)))
            chosen += (Sentence(units[second][0], units[second][1], float(scores[second])),)
        chosen = tuple(self._shorten(question, s) for s in chosen)
        return Extraction(sentences, block_cos, coverage, chosen, per_block)

    def _shorten(self, question: str, sentence: Sentence) -> Sentence:
        """The clause of a long sentence that the reader finds answers on its own, else the sentence."""
        if self.reader is None or not self.shorten or len(sentence.text.split()) <= self.span_words:
            return sentence
        parts = clauses(sentence.text)
        if len(parts) < 2:
            return sentence
        p = [float(x) for x in self.reader.answerability(question, parts)]
        best = int(np.argmax(p))
        if p[best] < ANSWERS:
            return sentence
        return Sentence(sentence.block, parts[best], sentence.score, sentence.text)
