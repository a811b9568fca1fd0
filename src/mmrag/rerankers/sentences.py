"""The offline reranker: each passage read sentence by sentence against the query.

The first stage embeds a chunk whole: one vector for 200 tokens, in which the one sentence that
answers a claim is averaged with everything around it. This reranker reads the query against each
sentence (and line, so a title counts) of each candidate with the bundled all-MiniLM-L6-v2, and a
passage scores as its best sentence. Its order is *fused* with the first stage's by reciprocal rank
(:attr:`SentenceMatchReranker.fuses_first_stage`), because on its own it is a different view of the
same evidence, not a better one.

Measured on SciFact train (809 claims, never trained on) through ``mmrag eval retrieval --rerank
offline``, top 30 reread, nDCG@10 without -> with: bm25 0.690 -> 0.711, text 0.669 -> 0.684, hybrid
0.729 -> 0.723 (the fusion already holds what the best sentence adds). Alone it ranks the hybrid's top
30 at 0.688, below the first stage: hence the fusion. Nothing here is fitted: the sentence rule is a
maximum and the fusion is plain reciprocal rank (k 60).

Why ``offline`` is this and not the trained cross-encoder (:mod:`mmrag.reader`): on the same hits its
relevance head scores 0.518 alone and 0.671 fused (200 claims); see ``docs/reranking.md``.

Example::

    reranker = mmrag.build_reranker("offline")  # the registry gives it the bundled MiniLM
    reranker.score("when does the museum close?", ["Tickets cost 5 euros. It closes at 18:00.", "Parking is free."])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmrag.errors import InvalidInputError
from mmrag.protocols import Embedder
from mmrag.textanalysis import split_sentences, tokens


def passage_units(passage: str) -> list[str]:
    """The sentences and lines of ``passage`` that hold at least two words, or the passage itself.

    Example:
        >>> passage_units("Visitor FAQ\\nThe museum opens at 9. It closes at 18:00 on weekdays.")
        ['Visitor FAQ', 'The museum opens at 9.', 'It closes at 18:00 on weekdays.']
    """
    units = [passage[a:b] for a, b in split_sentences(passage)]
    kept = [u for u in units if len(tokens(u)) >= 2]
    return kept or [passage]


class SentenceMatchReranker:
    """Scores a passage by the cosine of its best sentence to the query (module docstring).

    Thread-safe as the embedder is: sentence-transformers' ``encode`` may be called from several
    threads at once.
    """

    name = "offline"
    #: The rerank stage fuses this order with the first stage's (:func:`mmrag.rerank.rerank_hits`).
    fuses_first_stage = True

    def __init__(self, embedder: Embedder) -> None:
        """``embedder``: the text model that reads the sentences (``offline``: the bundled MiniLM, built
        by :func:`mmrag.registry.build_reranker`, as every model is built in the registry)."""
        self.embedder = embedder

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """The best sentence's cosine to ``query``, one per passage, in the passages' order."""
        if isinstance(passages, str) or not all(isinstance(p, str) for p in passages):
            raise InvalidInputError("passages must be a list of strings")
        if not passages:
            return []
        units = [passage_units(p) for p in passages]
        flat = [u for us in units for u in us]
        vectors = self.embedder.embed_texts([query, *flat])
        sims = vectors[1:] @ vectors[0]
        bounds = np.cumsum([0, *(len(us) for us in units)])
        return [float(sims[a:b].max()) for a, b in zip(bounds[:-1], bounds[1:])]
