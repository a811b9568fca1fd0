"""Grounded answers: retrieved blocks in, a cited answer (or an honest "I don't know") out.

- :mod:`~mmrag.answering.answerer`: the :class:`Answerer`, which composes the rest;
- :mod:`~mmrag.answering.answers`: the :class:`Answer` and :class:`Citation` records;
- :mod:`~mmrag.answering.reply`: a model's reply checked against its context (the grounding guard);
- :mod:`~mmrag.answering.context`: hits packed into delimited context blocks;
- :mod:`~mmrag.answering.extractive`: the context sentence that answers, with no model call;
- :mod:`~mmrag.answering.guard`: the calibrated abstention gate (answer at all, or refuse);
- :mod:`~mmrag.answering.verification`: the offline hallucination detector;
- :mod:`~mmrag.answering.sentences`: which lines of a block are sentences that may answer.
"""

from mmrag.answering.answerer import ANSWER_MODES, SYSTEM_PROMPT, Answerer
from mmrag.answering.answers import ABSTAIN_TEXT, Answer, AnswerHolder, Citation
from mmrag.answering.reply import without_markers

__all__ = ["ABSTAIN_TEXT", "ANSWER_MODES", "SYSTEM_PROMPT", "Answer", "AnswerHolder", "Answerer", "Citation",
           "without_markers"]
