"""Answer metrics: is the answer right, does it cite the gold document, does it abstain when it should.

Scored per query from the answer and the dataset's ``reference``/``relevant``/``answerable`` fields,
then averaged by the runner like every other metric (so the reports show them and ``--fail-under``
gates them):

* ``exact_match`` and ``token_f1``: SQuAD v1.1's definitions (lower-case, punctuation and articles
  removed, whitespace collapsed); on answerable queries with a reference, an abstention scores 0.
* ``contains_reference``: the normalised reference occurs inside the normalised answer. Extractive
  answers are whole sentences, where exact match is 0 by construction; this is the fair figure.
* ``cites_gold``: on answered (not abstained) answerable queries, one citation names a relevant doc.
* ``abstention_recall``: on unanswerable queries, the share refused; ``abstention_precision``: on
  abstentions, the share whose query was unanswerable.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

#: Producer named in the reports for these figures.
ANSWER_PRODUCER = "mmrag answer metrics (SQuAD normalisation, no LLM)"
METHODS = {
    "exact_match": "answerable queries: normalised answer equals the reference (SQuAD EM; abstention = 0)",
    "token_f1": "answerable queries: token F1 against the reference (SQuAD; abstention = 0)",
    "contains_reference": "answerable queries: the normalised reference occurs in the answer (abstention = 0)",
    "cites_gold": "answered answerable queries: a citation names a relevant document",
    "abstention_recall": "unanswerable queries: share the answer refused",
    "abstention_precision": "abstentions: share whose query was unanswerable",
}

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1 between the normalised answer and reference."""
    got, want = normalize_answer(answer).split(), normalize_answer(reference).split()
    common = sum((Counter(got) & Counter(want)).values())
    if not got or not want or common == 0:
        return float(got == want)
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def contains_reference(answer: str, reference: str) -> float:
    """1.0 when the normalised reference occurs, as whole words, in the normalised answer."""
    ref = normalize_answer(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize_answer(answer)} ")


def answer_scores(answer: dict[str, Any] | None, *, reference: str | None, relevant: frozenset[str],
                  answerable: bool) -> dict[str, float]:
    """The answer metrics that apply to one query (a key is absent when the metric does not apply).

    Args:
        answer: the runner's answer row (``text``, ``abstained``, ``citations``), or None (not answered).
        reference: the reference answer, if the dataset has one.
        relevant: the query's gold document ids.
        answerable: False when the dataset marks the query unanswerable from the corpus.
    """
    if answer is None:
        return {}
    abstained = bool(answer["abstained"])
    out: dict[str, float] = {}
    if not answerable:
        out["abstention_recall"] = float(abstained)
    if abstained:
        out["abstention_precision"] = float(not answerable)
    if answerable and reference:
        text = "" if abstained else answer["text"]
        out["exact_match"] = exact_match(text, reference)
        out["token_f1"] = token_f1(text, reference)
        out["contains_reference"] = contains_reference(text, reference)
    if answerable and not abstained and relevant:
        out["cites_gold"] = float(any(c in relevant for c in answer.get("citations", ())))
    return out
