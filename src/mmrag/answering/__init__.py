"""Grounded answers: retrieved blocks in, a cited answer (or an honest "I don't know") out.

- :mod:`~mmrag.answering.answerer`: the :class:`Answerer` and its grounding guard;
- :mod:`~mmrag.answering.context`: hits packed into delimited context blocks;
- :mod:`~mmrag.answering.extractive`: the context sentence that answers, with no model call;
- :mod:`~mmrag.answering.guard`: the calibrated abstention gate (answer at all, or refuse);
- :mod:`~mmrag.answering.verification`: the offline hallucination detector;
- :mod:`~mmrag.answering.sentences`: which lines of a block are sentences that may answer.
"""

from mmrag.answering.answerer import (ABSTAIN_TEXT, ANSWER_MODES, SYSTEM_PROMPT, Answer, Answerer, AnswerHolder,
                                      Citation, without_markers)

__all__ = ["ABSTAIN_TEXT", "ANSWER_MODES", "SYSTEM_PROMPT", "Answer", "AnswerHolder", "Answerer", "Citation",
           "without_markers"]
