"""What an answer is: its text, the blocks it cites, and why it abstained when it did.

Records only; :class:`~mmrag.answering.Answerer` makes them and :mod:`mmrag.answering.reply` checks a
model's reply into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmrag.answering.context import ContextBlock, from_ocr
from mmrag.llms import Usage

ABSTAIN_TEXT = "I don't know: the knowledge base does not contain the answer."


@dataclass(frozen=True)
class Citation:
    """A context block an answer rests on."""

    n: int
    doc_id: str
    source: str
    page: int | None
    modality: str
    excerpt: str
    score: float
    record_id: str = ""  # the store record (for an image: where its pixels are served from)
    #: True when the passage was read from pixels (OCR of a scan or a picture), not a text layer:
    #: its words may be misread, so a reader should check the page itself.
    from_ocr: bool = False


@dataclass(frozen=True)
class Answer:
    """A grounded answer. ``raw_text`` is what the model said before the guard (kept for audits)."""

    question: str
    text: str
    citations: tuple[Citation, ...]
    abstained: bool
    guard: str  # supported | citation_added | citation_replaced | abstained:<why>
    model: str
    usage: Usage = field(default_factory=Usage)
    raw_text: str = ""
    blocks: tuple[ContextBlock, ...] = ()
    #: The detector's verdict when the answer was verified: score, hallucinated, unsupported sentences.
    verification: dict[str, Any] | None = None
    #: The calibrated gate's decision (``p_answerable``, ``threshold``, ``features``) when one ran.
    abstention: dict[str, Any] | None = None
    #: ``generate`` or ``extractive``: how the text was made (``auto`` ends as one of the two).
    mode: str = "generate"
    #: The extractor's signals (``block_cos``, ``coverage``, ``sentence_cos``) when an extractor ran:
    #: the gate's inputs, kept for audits and for calibration (``eval/calibrate_abstention.py``).
    signals: dict[str, float] | None = None


class AnswerHolder:
    """Receives the checked :class:`Answer` when a streamed reply ends."""

    answer: Answer | None = None


def citation(block: ContextBlock) -> Citation:
    """The :class:`Citation` of a context block."""
    hit = block.hit
    return Citation(block.n, hit.doc_id, hit.source, hit.page, hit.modality, block.content, hit.score, hit.id,
                    from_ocr=from_ocr(hit))
