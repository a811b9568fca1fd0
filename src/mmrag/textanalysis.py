"""Text analysis shared by every component that compares words: one tokenizer, one stemmer, one stop list.

Four components decide things from the words of a text, and they used to do it three ways, so the
answer guard and the hallucination detector could disagree about the same sentence:

* the keyword index (:mod:`mmrag.keyword`) stems its BM25 tokens with :func:`stem_words`;
* the answer guard (:mod:`mmrag.answering`) asks whether an answer's :func:`content_words` occur in
  the block it cites;
* the extractor's gate (:mod:`mmrag.answering.extractive`) measures how many of the question's content words a
  block holds;
* the detector (:mod:`mmrag.answering.verification`) counts an answer sentence's novel :func:`content_tokens`.

Content words are the Snowball stems (PyStemmer, a core dependency) of the words that state a fact:
stop words never, and *discourse* words (connectives, hedges, words about the text itself, which an
answer may add freely) dropped from the side being checked but kept on the side that supports it.
Numbers keep their digits and decimal point, without thousands separators, so ``1,000`` matches
``1000`` and ``3.5`` does not match ``3`` and ``5``.
"""

from __future__ import annotations

import functools
import re
__all__ = ["DISCOURSE", "STOPWORDS", "content_tokens", "content_words", "split_sentences", "stem", "stem_words",
           "tokens"]

#: A word, or a number with its decimal point and thousands separators.
_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")

#: Words that carry no content in any sentence, including the words a RAG answer uses about its
#: own inputs ("according to the provided passage").
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that "
    "these those there here what which who whom whose when where why how do does did done not no yes so than "
    "then too very can could should would will shall may might must have has had i you he she we they them "
    "his her their our your my me us about into over under also just only any all some each such more most "
    "other another per via according context block answer question based provided information passage "
    "passages given mentioned following include includes including however additionally overall".split())

#: Connectives, hedges and words about the text itself: an answer may add them freely, because they
#: state no fact that the context could support or contradict.
DISCOURSE = frozenset(
    "therefore thus hence while whereas although though since because due specific specifically step steps "
    "follow follows sure note noted important importantly main mainly various several both either neither one "
    "two first second third finally final next once before after until during through without within among "
    "between summary summarize summarized brief briefly detail details detailed mention mentions stated "
    "state states suggest suggests suggested indicate indicates indicated appear appears describe describes "
    "described refer refers unable able example instance like well help helps ensure make makes made use used "
    "using need needs needed way ways type types kind kinds factor factors depend depends depending vary "
    "varies typically typical generally general usually often likely possible possibly potential "
    "potentially recommend recommended consider considered certain particular particularly different "
    "difference differences similar".split())


@functools.lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer  # PyStemmer: a core dependency

    return Stemmer.Stemmer("english")


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The English Snowball stem of a lower-case ``word``.

    Example:
        >>> stem("dividing")
        'divid'
    """
    return str(_stemmer().stemWord(word))


def stem_words(words: list[str]) -> list[str]:
    """:func:`stem` for a batch, in one call (the form bm25s's tokenizer takes as ``stemmer=``)."""
    return [str(w) for w in _stemmer().stemWords(words)]


def tokens(text: str) -> list[str]:
    """The words and numbers of ``text``, as written (case kept)."""
    return _TOKEN.findall(text)


def content_tokens(text: str, *, drop_discourse: bool = True) -> list[str]:
    """The content words of ``text`` in order, repeats kept (see the module docstring).

    Args:
        text: any text.
        drop_discourse: drop :data:`DISCOURSE` words too; pass False for the text that supports a
            claim (a context, a question), where such a word may still be what a claim repeats.

    Returns:
        Stems of the words of three or more letters that are not stop words, and the numbers, with
        thousands separators removed.

    Example:
        >>> content_tokens("The towers were 1,000 metres tall")
        ['tower', '1000', 'metr', 'tall']
    """
    out = []
    for token in _TOKEN.findall(text):
        lower = token.lower()
        if lower in STOPWORDS or (drop_discourse and lower in DISCOURSE):
            continue
        if token[0].isdigit():
            out.append(token.replace(",", ""))
        elif len(lower) > 2:
            out.append(stem(lower))
    return out


def content_words(text: str, *, drop_discourse: bool = True) -> set[str]:
    """The set of :func:`content_tokens` of ``text``: what the guard, the gate and the detector compare."""
    return set(content_tokens(text, drop_discourse=drop_discourse))


#: A sentence ends at . ! or ? (and any closing quote or bracket) before a capital, a digit or an
#: opening mark, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"(\[*\-])|\n+")
_BARE_MARKER = re.compile(r"(?:\d{1,2}|[a-z])[.)]")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of the sentences (and list items, lines) of ``text``.

    A bare list marker ("1.") split off by the sentence rule is joined back to its item.
    """
    pieces: list[tuple[int, int]] = []
    pos = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        stop = match.start() if match else len(text)
        chunk = text[pos:stop]
        left = len(chunk) - len(chunk.lstrip())
        start, end = pos + left, pos + len(chunk.rstrip())
        if end > start:
            if pieces and _BARE_MARKER.fullmatch(text[pieces[-1][0]:pieces[-1][1]]):
                pieces[-1] = (pieces[-1][0], end)
            else:
                pieces.append((start, end))
        if match:
            pos = match.end()
    return pieces
