"""The lexical check of a model's reply: its citations parsed, and abstention when it is unsupported.

Small models invent answers, so the check is deterministic: see :func:`check_reply`. Lexical overlap
is crude. It catches invented names and numbers, not a wrong statement assembled from words of the
context; the detector (:mod:`mmrag.answering.verification`) reads sentences for that.
"""

from __future__ import annotations

import re
from typing import Sequence

from mmrag.answering.answers import ABSTAIN_TEXT, Answer, citation
from mmrag.answering.context import ContextBlock
from mmrag.llms import Usage
from mmrag.textanalysis import content_words

MARKER = re.compile(r"\[(\d{1,3})\]")
_MODEL_ABSTAINS = re.compile(
    r"\b(i (do not|don't|dont) know|does not contain|doesn't contain|no information|not (mentioned|provided)"
    r"|cannot answer|can't answer|unable to answer)\b", re.IGNORECASE)


def without_markers(text: str) -> str:
    """``text`` with its ``[n]`` citation markers blanked, for a detector: markers are not claims.

    Each marker becomes spaces of the same length, so sentence offsets into ``text`` still fit.
    """
    return MARKER.sub(lambda m: " " * len(m.group(0)), text)


def check_reply(question: str, blocks: Sequence[ContextBlock], raw: str, model: str, usage: Usage, *,
                min_support: float) -> Answer:
    """A model's raw reply checked against its context: the answer it may give, or an abstention.

    Markers naming no block are dropped. The reply abstains when it is empty or says it does not
    know, adds no content word to the question, holds a number found nowhere in the context, or has
    less than ``min_support`` of its new content words in the blocks it cites and in any single block.
    A supported reply that cites nothing, or cites the wrong blocks, cites its best-supporting block.
    """
    by_n = {b.n: b for b in blocks}

    def result(text: str, cited: Sequence[ContextBlock], guard: str) -> Answer:
        cites = tuple(citation(b) for b in cited)
        return Answer(question, text, cites, guard.startswith("abstained"), guard, model, usage, raw,
                      tuple(blocks))

    text = MARKER.sub(lambda m: m.group(0) if int(m.group(1)) in by_n else "", raw).strip()
    text = re.sub(r"[ \t]{2,}", " ", text)
    if not text or _MODEL_ABSTAINS.search(text):
        return result(ABSTAIN_TEXT, (), "abstained:model")
    cited = [by_n[n] for n in dict.fromkeys(int(m) for m in MARKER.findall(text))]
    new_words = content_words(MARKER.sub(" ", text)) - content_words(question)
    if not new_words:
        return result(ABSTAIN_TEXT, (), "abstained:unsupported")
    if _invented_numbers(new_words, blocks):
        return result(ABSTAIN_TEXT, (), "abstained:unsupported")
    if cited and _support(new_words, cited) >= min_support:
        return result(text, cited, "supported")
    best = max(blocks, key=lambda b: (_support(new_words, [b]), -b.n))
    if _support(new_words, [best]) < min_support:
        return result(ABSTAIN_TEXT, (), "abstained:unsupported")
    return result(text, [best], "citation_replaced" if cited else "citation_added")


def _invented_numbers(words: set[str], blocks: Sequence[ContextBlock]) -> bool:
    # Invented numbers, dates and codes are the commonest hallucination and the cheapest to catch:
    # every token with a digit in it must occur somewhere in the context.
    context: set[str] = set()
    for block in blocks:
        context |= content_words(block.content, drop_discourse=False)
    return any(any(ch.isdigit() for ch in w) and w not in context for w in words)


def _support(words: set[str], blocks: Sequence[ContextBlock]) -> float:
    context: set[str] = set()
    for block in blocks:
        context |= content_words(block.content, drop_discourse=False)
    return len(words & context) / len(words) if words else 0.0
