"""The calibrated abstention gate: whether the retrieved context holds an answer at all.

Whether to answer at all is a decision apart from the answer (:class:`AbstentionGate`): a logistic
model over the signals (:meth:`~mmrag.answering.extractive.Extraction.features`) its calibration file
names:

* ``block_cos``: the best cosine between the question and a retrieved text block (retrieval's own
  confidence, in the text model's space, whatever retriever produced the hits);
* ``coverage``: the best share of the question's content words found in one block (a lexical
  retrieval signal: a question about a name the corpus never mentions finds few of its words);
* ``sentence_cos``: the cosine of the chosen sentence (the extractor's own signal);
* ``answerability``: the reader's best P(this block answers the question). The first three are all
  high for a near-miss question (an entity changed, a false premise: the passage is on topic and
  does not answer); only a model that reads the two together tells them apart.

``p = sigmoid(w . standardised(features) + b)`` estimates the chance that the knowledge base holds
the answer; the gate refuses below ``threshold``, and below the reader's floor
(``min_answerability``, when the calibration sets one) whatever ``p`` says. The weights are fitted by
``eval/calibrate_abstention.py`` on the HaluEval development set (``eval/datasets/halueval.py``:
250 answerable questions whose passages were ingested, 250 whose passages were not), never on the
near-miss evaluation set; the fitted file is ``mmrag/assets/abstention.json`` and records what it
was fitted on and its cross-validated figures.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mmrag.errors import InvalidInputError

if TYPE_CHECKING:
    from mmrag.answering.extractive import Extraction

log = logging.getLogger(__name__)

#: Every signal the gate can read; a calibration file names the ones it was fitted on.
FEATURES = ("block_cos", "coverage", "sentence_cos", "answerability")
#: The calibration that ships with mmrag (see its ``fitted_on``).
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "assets" / "abstention.json"


@dataclass(frozen=True)
class GateDecision:
    """Why the gate answered or refused: its probability, threshold and inputs (JSON-ready)."""

    answer: bool
    p_answerable: float
    threshold: float
    features: dict[str, float]
    calibration: str
    #: The reader's floor: refuse when no block reaches it, whatever the probability (None: no floor).
    min_answerability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"answer": self.answer, "p_answerable": round(self.p_answerable, 4), "threshold": self.threshold,
               "features": {k: round(v, 4) for k, v in self.features.items()}, "calibration": self.calibration}
        if self.min_answerability is not None:
            out["min_answerability"] = self.min_answerability
        return out


class AbstentionGate:
    """A logistic model over some of :data:`FEATURES` that decides whether to answer (module docstring).

    Args:
        coef, intercept, mean, scale: the fitted model on standardised features.
        features: the signals the weights read, in order (a subset of :data:`FEATURES`).
        threshold: refuse when the estimated probability of an answer in the context is below it.
        min_answerability: also refuse when the reader's best block answerability is below this
            (None: the probability alone decides).
        calibration: a line saying what the weights were fitted on (shown with each decision).
        text_model: the text model whose cosines the weights were fitted to.
        grounding: also refuse a question naming something its context never mentions, looked for in
            ``context`` (every text block) or ``cited`` (the answer's blocks); None: no such check
            (:mod:`mmrag.answering.grounding`; the answerer runs it once the probability says "answer").
    """

    def __init__(self, coef: Sequence[float], intercept: float, mean: Sequence[float], scale: Sequence[float], *,
                 features: Sequence[str] = FEATURES, threshold: float = 0.5, min_answerability: float | None = None,
                 calibration: str = "", text_model: str = "", grounding: str | None = None) -> None:
        from mmrag.answering.grounding import SCOPES

        if grounding is not None and grounding not in SCOPES:
            raise InvalidInputError(f"grounding must be one of {', '.join(SCOPES)} or null, got {grounding!r}")
        self.grounding = grounding
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features:
            raise InvalidInputError(f"unknown abstention features {unknown}; known: {', '.join(FEATURES)}")
        if not (len(coef) == len(mean) == len(scale) == len(features)):
            raise InvalidInputError(f"an abstention calibration needs {len(features)} weights ({', '.join(features)})")
        if not 0.0 < threshold < 1.0:
            raise InvalidInputError(f"the abstention threshold must lie in (0, 1), got {threshold}")
        if min_answerability is not None and not 0.0 <= min_answerability < 1.0:
            raise InvalidInputError(f"min_answerability must lie in [0, 1), got {min_answerability}")
        self.features = tuple(features)
        self.coef, self.intercept = np.asarray(coef, dtype=np.float64), float(intercept)
        self.mean, self.scale = np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        self.threshold, self.min_answerability = threshold, min_answerability
        self.calibration, self.text_model = calibration, text_model

    @property
    def needs_reader(self) -> bool:
        """True when the gate reads the offline reader's answerability."""
        return "answerability" in self.features or self.min_answerability is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "calibration", threshold: float | None = None,
                  grounding: str | None = None) -> "AbstentionGate":
        """Build a gate from a calibration file's contents (see ``eval/calibrate_abstention.py``).

        ``threshold`` and ``grounding`` (``off``, ``cited``, ``context``) override the file's own.
        """
        scope = data.get("grounding") if grounding is None else (None if grounding == "off" else grounding)
        try:
            floor = data.get("min_answerability")
            return cls(data["coef"], data["intercept"], data["mean"], data["scale"], features=list(data["features"]),
                       threshold=float(data["threshold"] if threshold is None else threshold),
                       min_answerability=None if floor is None else float(floor),
                       calibration=str(data.get("fitted_on", "")), text_model=str(data.get("text_model", "")),
                       grounding=scope)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}; write one with eval/calibrate_abstention.py") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: not an abstention calibration ({exc!r}); "
                                    "write one with eval/calibrate_abstention.py") from exc

    @classmethod
    def load(cls, path: str | Path | None = None, *, threshold: float | None = None,
             grounding: str | None = None) -> "AbstentionGate":
        """The calibration at ``path``, or the one shipped with mmrag (see :meth:`from_dict` for the overrides)."""
        if path is None:
            return _shipped(threshold, grounding)
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path}: cannot read the abstention calibration ({exc})") from exc
        return cls.from_dict(data, where=str(path), threshold=threshold, grounding=grounding)

    def check_model(self, text_model: str) -> None:
        """Log (once per gate) when the knowledge base's text model is not the calibrated one."""
        if self.text_model and text_model and text_model != self.text_model and not getattr(self, "_warned", False):
            self._warned = True
            log.warning("the abstention gate was calibrated for text model %s, this knowledge base uses %s: "
                        "its refusal rate may differ (recalibrate with eval/calibrate_abstention.py)",
                        self.text_model, text_model)

    def probability(self, features: Mapping[str, float]) -> float:
        """The estimated chance that the context holds the answer.

        Raises:
            InvalidInputError: a signal the gate reads is missing (answerability needs the reader).
        """
        _require_signals(self.features, features)
        x = (np.array([features[f] for f in self.features]) - self.mean) / self.scale
        z = float(self.coef @ x + self.intercept)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def decide(self, extraction: Extraction) -> GateDecision:
        """Answer or refuse, with the probability and inputs that decided it."""
        features = extraction.features()
        p = self.probability(features)
        answer = p >= self.threshold
        if self.min_answerability is not None:
            _require_signals(("answerability",), features)
            answer = answer and features["answerability"] >= self.min_answerability
        return GateDecision(answer, p, self.threshold, features, self.calibration, self.min_answerability)


@functools.lru_cache(maxsize=4)
def _shipped(threshold: float | None, grounding: str | None) -> AbstentionGate:
    data = json.loads(DEFAULT_CALIBRATION.read_text(encoding="utf-8"))
    return AbstentionGate.from_dict(data, where=str(DEFAULT_CALIBRATION), threshold=threshold, grounding=grounding)


def _require_signals(names: Sequence[str], features: Mapping[str, float]) -> None:
    missing = [f for f in names if f not in features]
    if missing:
        raise InvalidInputError(f"the abstention gate reads {', '.join(missing)}, which the extraction lacks: "
                                "build the Extractor with reader=load_reader() (mmrag's offline reader)")
