"""The rerank stage: a model that reads the query with each passage rescores the first stage's top hits.

Retrieval compares a query with a passage through vectors embedded apart, or through shared words;
a reranker (:class:`~mmrag.protocols.Reranker`: a cross-encoder, a hosted rerank API, or mmrag's
offline reader) reads the two together, which is what tells "answers the question" from "is about
the same thing". It is slower per pair, so it rereads only the top ``depth`` hits of the first stage.

How the stage treats what it is given:

* **Text hits only.** A reranker reads text; image hits keep their score and their place in the
  list (the rank the first stage, e.g. the fusion, gave them), and the text hits are reordered
  among the remaining places. So an image the fusion put 3rd is still 3rd.
* **What it reads** is the chunk as the keyword index sees it: the document's title in front of the
  text (unless the chunk opens with it), after the section path the text model also sees. A
  chunk's first words are often not its document's subject, and the title says what it is about.
* **Below the depth** hits keep the first stage's order, after the reranked ones.
* **Replace or fuse.** A reranker trained for the job (a cross-encoder, a hosted API) replaces the
  first stage's order. One that says ``fuses_first_stage = True`` (the offline reranker: on its own
  it ranks below the first stage, fused it lifts a single retriever) is fused with it by reciprocal
  rank (:data:`FUSE_K`): each text hit scores ``1/(k + first-stage rank) + 1/(k + reranker rank)``,
  ranks counted among the text hits.
* **Scores.** A reranked hit's ``score`` is the reranker's score (or the fused one); its metadata
  records the reranker's as ``rerank_score`` beside ``first_stage_score`` (the retriever's, or the
  fusion's, score), so a caller can see both. Equal scores keep the first stage's order.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from mmrag.errors import UpstreamError
from mmrag.keyword import with_title
from mmrag.protocols import Reranker
from mmrag.tracing import span
from mmrag.types import Hit, embedding_text

#: Hits the stage rereads when no depth is given (``MMRAG_RERANK__DEPTH``; the settings' default too).
DEFAULT_DEPTH = 30
#: The reciprocal-rank constant when a reranker's order is fused with the first stage's: the usual 60
#: (Cormack et al. 2009), not fitted to any data set.
FUSE_K = 60


def passage_text(hit: Hit) -> str:
    """What a reranker reads for ``hit``: title, section path and chunk text (module docstring)."""
    meta = hit.metadata
    return with_title(embedding_text(hit.text or "", meta), meta.get("title"))


def rerank_hits(reranker: Reranker, query: str, hits: Sequence[Hit], depth: int = DEFAULT_DEPTH) -> list[Hit]:
    """Rescore the text hits among the first ``depth`` of ``hits`` with ``reranker``, best first.

    Args:
        reranker: scores (query, passage) pairs.
        query: the query text (an empty one leaves ``hits`` as they are: there is nothing to read).
        hits: the first stage's hits, best first.
        depth: how many of the top hits are reread.

    Returns:
        The same hits: the text hits among the first ``depth`` reordered by the reranker's score, or
        by its rank fused with the first stage's (module docstring; image hits keep their places),
        then the rest in their order.

    Raises:
        UpstreamError: the reranker returned the wrong number of scores, or a score that is not a number.

    Example:
        >>> class Longest:
        ...     name = "longest"
        ...     def score(self, query, passages): return [float(len(p)) for p in passages]
        >>> hits = [Hit("a", "a", "/a", "text", 0.9, text="short"), Hit("b", "b", "/b", "text", 0.5, text="much longer")]
        >>> [h.id for h in rerank_hits(Longest(), "q", hits)]
        ['b', 'a']
    """
    head, tail = list(hits[:depth]), list(hits[depth:])
    slots = [i for i, h in enumerate(head) if h.modality == "text"]
    if not slots or not query.strip():
        return list(hits)
    with span("rerank", reranker=reranker.name, candidates=len(slots), depth=depth):
        scores = reranker.score(query, [passage_text(head[i]) for i in slots])
    if len(scores) != len(slots):
        raise UpstreamError(f"Reranker {reranker.name!r} returned {len(scores)} scores for {len(slots)} passages")
    values = [float(s) for s in scores]
    if not all(math.isfinite(v) for v in values):
        raise UpstreamError(f"Reranker {reranker.name!r} returned a score that is not a finite number")
    keys = values
    if getattr(reranker, "fuses_first_stage", False):
        own = sorted(range(len(slots)), key=lambda j: -values[j])  # stable: ties keep the first stage's order
        place = {j: r for r, j in enumerate(own)}
        keys = [1.0 / (FUSE_K + j + 1) + 1.0 / (FUSE_K + place[j] + 1) for j in range(len(slots))]
    order = sorted(range(len(slots)), key=lambda j: -keys[j])  # stable: ties keep the first stage's order
    out = list(head)
    for slot, j in zip(slots, order):
        hit = head[slots[j]]
        meta = {**hit.metadata, "rerank_score": values[j], "first_stage_score": hit.score}
        out[slot] = replace(hit, score=keys[j], metadata=meta)
    return out + tail
