"""Extractive answers and the calibrated abstention gate.

A 135M-parameter chat model answers fluently and wrongly (issue 14: 3% of its answers held the right
one). Retrieval, on the other hand, is good, so the offline default answers by *extraction*: the
sentence of the retrieved context that the text model (MiniLM by default) finds closest to the
question, then the sentence closest to the question *and that first sentence* (a second hop, as in
multi-hop dense retrieval), each cited to its block. The second hop is there because an answer
often spans two passages ("the wife of X" is named in one, her nationality in the other); on the
HaluEval development set it raised "the answer contains the reference" from 0.38 (one sentence)
and 0.62 (the two closest to the question) to 0.65. An extractive answer cannot invent anything,
takes a fraction of a second, and gives a reader the passages' own words.

Whether to answer at all is a separate, calibrated decision (:class:`AbstentionGate`). Three signals
go into a logistic model:

* ``block_cos``: the best cosine between the question and a retrieved text block (retrieval's own
  confidence, in the text model's space, whatever retriever produced the hits);
* ``coverage``: the best share of the question's content words found in one block (a lexical
  retrieval signal: a question about a name the corpus never mentions finds few of its words);
* ``sentence_cos``: the cosine of the chosen sentence (the extractor's own signal).

``p = sigmoid(w . standardised(features) + b)`` estimates the chance that the knowledge base holds
the answer; the gate refuses below ``threshold``. The weights are fitted by
``eval/calibrate_abstention.py`` on the HaluEval development set (``eval/datasets/halueval.py``:
250 answerable questions whose passages were ingested, 250 whose passages were not); the fitted file
is ``mmrag/assets/abstention.json`` and records what it was fitted on and its cross-validated figures.
The third signal the issue names, the offline hallucination detector's verdict on the answer, is
applied after the answer exists (see :mod:`mmrag.answering`): a generated answer it judges
hallucinated is replaced by the extractive one (``auto``) or refused (``generate`` with a verifier).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mmrag.errors import InvalidInputError

if TYPE_CHECKING:
    from mmrag.answering import ContextBlock
    from mmrag.verification import TextEmbedder

log = logging.getLogger(__name__)

FEATURES = ("block_cos", "coverage", "sentence_cos")
#: The calibration that ships with mmrag (fitted on the HaluEval development set).
DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "assets" / "abstention.json"

# Two passages glued without a space ("...19th century.First for Women is ...") are common in
# scraped corpora: a lower-case word, a full stop and a capitalised word start a new sentence.
_GLUED = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z])")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Sentence:
    """A sentence of one context block and its cosine to the question."""

    block: int  # the block's number (ContextBlock.n)
    text: str
    score: float


@dataclass(frozen=True)
class Extraction:
    """The best-supported sentences for a question, and the features the gate reads."""

    sentences: tuple[Sentence, ...]  # by cosine to the question, best first
    block_cos: float
    coverage: float
    #: The answer: the best sentence, then the second hop's (when there is one), in that order.
    chosen: tuple[Sentence, ...] = ()

    @property
    def best(self) -> Sentence:
        return self.sentences[0]

    def features(self) -> dict[str, float]:
        """The gate's inputs, by name (see :data:`FEATURES`)."""
        return {"block_cos": self.block_cos, "coverage": self.coverage, "sentence_cos": self.best.score}


def split_passage(text: str) -> list[str]:
    """The sentences of a passage (the detector's splitter, plus glued passages split apart)."""
    from mmrag.verification import split_sentences

    out = []
    for part in _GLUED.split(text):
        out += [s for s in (part[a:b].strip() for a, b in split_sentences(part)) if s]
    return out


class Extractor:
    """Ranks the sentences of the retrieved text blocks by their cosine to the question.

    Args:
        embedder: unit-norm text vectors (the knowledge base's text model).
        hops: sentences in the answer: 1 (the closest to the question) or 2 (then the closest to
            the question followed by the first; module docstring).
        min_words: sentences with fewer words are not answers ("See also.", a bare heading).
    """

    def __init__(self, embedder: TextEmbedder, *, hops: int = 2, min_words: int = 3) -> None:
        if hops not in (1, 2):
            raise InvalidInputError(f"hops must be 1 or 2, got {hops}")
        self.embedder = embedder
        self.hops, self.min_words = hops, min_words

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
            units += [(b.n, s) for s in split_passage(b.content) if len(s.split()) >= self.min_words]
        if not units:
            return None
        vectors = self.embedder.embed_texts([question, *(b.content for b in text_blocks), *(s for _, s in units)])
        q = vectors[0]
        block_cos = float(np.max(vectors[1:1 + len(text_blocks)] @ q))
        scores = vectors[1 + len(text_blocks):] @ q
        order = np.argsort(-scores, kind="stable")
        sentences = tuple(Sentence(units[i][0], units[i][1], float(scores[i])) for i in order)
        wanted = _content_words(question)
        coverage = max((len(wanted & _content_words(b.content)) / len(wanted) for b in text_blocks),
                       default=0.0) if wanted else 0.0
        chosen = sentences[:1]
        if self.hops == 2 and len(sentences) > 1:
            hop = self.embedder.embed_texts([f"{question} {sentences[0].text}"])[0]
            rest = [int(i) for i in order[1:]]
            second = max(rest, key=lambda i: (float(vectors[1 + len(text_blocks) + i] @ hop), -rest.index(i)))
            chosen += (Sentence(units[second][0], units[second][1], float(scores[second])),)
        return Extraction(sentences, block_cos, coverage, chosen)


@dataclass(frozen=True)
class GateDecision:
    """Why the gate answered or refused: its probability, threshold and inputs (JSON-ready)."""

    answer: bool
    p_answerable: float
    threshold: float
    features: dict[str, float]
    calibration: str

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "p_answerable": round(self.p_answerable, 4), "threshold": self.threshold,
                "features": {k: round(v, 4) for k, v in self.features.items()}, "calibration": self.calibration}


class AbstentionGate:
    """A logistic model over :data:`FEATURES` that decides whether to answer (module docstring).

    Args:
        coef, intercept, mean, scale: the fitted model on standardised features.
        threshold: refuse when the estimated probability of an answer in the context is below it.
        calibration: a line saying what the weights were fitted on (shown with each decision).
        text_model: the text model whose cosines the weights were fitted to.
    """

    def __init__(self, coef: Sequence[float], intercept: float, mean: Sequence[float], scale: Sequence[float], *,
                 threshold: float = 0.5, calibration: str = "", text_model: str = "") -> None:
        if not (len(coef) == len(mean) == len(scale) == len(FEATURES)):
            raise InvalidInputError(f"an abstention calibration needs {len(FEATURES)} weights ({', '.join(FEATURES)})")
        if not 0.0 < threshold < 1.0:
            raise InvalidInputError(f"the abstention threshold must lie in (0, 1), got {threshold}")
        self.coef, self.intercept = np.asarray(coef, dtype=np.float64), float(intercept)
        self.mean, self.scale = np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        self.threshold, self.calibration, self.text_model = threshold, calibration, text_model

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "calibration",
                  threshold: float | None = None) -> "AbstentionGate":
        """Build a gate from a calibration file's contents (see ``eval/calibrate_abstention.py``)."""
        try:
            if list(data["features"]) != list(FEATURES):
                raise InvalidInputError(f"{where}: features {data['features']} are not {list(FEATURES)}")
            return cls(data["coef"], data["intercept"], data["mean"], data["scale"],
                       threshold=float(data["threshold"] if threshold is None else threshold),
                       calibration=str(data.get("fitted_on", "")), text_model=str(data.get("text_model", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: not an abstention calibration ({exc!r}); "
                                    "write one with eval/calibrate_abstention.py") from exc

    @classmethod
    def load(cls, path: str | Path | None = None, *, threshold: float | None = None) -> "AbstentionGate":
        """The calibration at ``path``, or the one shipped with mmrag."""
        if path is None:
            return _shipped(threshold)
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path}: cannot read the abstention calibration ({exc})") from exc
        return cls.from_dict(data, where=str(path), threshold=threshold)

    def check_model(self, text_model: str) -> None:
        """Log (once per gate) when the knowledge base's text model is not the calibrated one."""
        if self.text_model and text_model and text_model != self.text_model and not getattr(self, "_warned", False):
            self._warned = True
            log.warning("the abstention gate was calibrated for text model %s, this knowledge base uses %s: "
                        "its refusal rate may differ (recalibrate with eval/calibrate_abstention.py)",
                        self.text_model, text_model)

    def probability(self, features: Mapping[str, float]) -> float:
        """The estimated chance that the context holds the answer."""
        x = (np.array([features[f] for f in FEATURES]) - self.mean) / self.scale
        z = float(self.coef @ x + self.intercept)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def decide(self, extraction: Extraction) -> GateDecision:
        """Answer or refuse, with the probability and inputs that decided it."""
        features = extraction.features()
        p = self.probability(features)
        return GateDecision(p >= self.threshold, p, self.threshold, features, self.calibration)


@functools.lru_cache(maxsize=4)
def _shipped(threshold: float | None) -> AbstentionGate:
    data = json.loads(DEFAULT_CALIBRATION.read_text(encoding="utf-8"))
    return AbstentionGate.from_dict(data, where=str(DEFAULT_CALIBRATION), threshold=threshold)


def _content_words(text: str) -> set[str]:
    from mmrag.answering import _content_words as words

    return words(text)
