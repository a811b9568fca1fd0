"""Extractive answers and the calibrated abstention gate.

A 135M-parameter chat model answers fluently and wrongly (issue 14: 3% of its answers held the right
one). Retrieval, on the other hand, is good, so the offline default answers by *extraction*: the
sentence of the retrieved context that the text model (MiniLM by default) finds closest to the
question, each cited to its block. Headings and questions are never answers (:mod:`mmrag.sentences`
reads the block's lines: a Markdown ``#`` line, a short line that ends no sentence, and a sentence
ending in "?" are left out; issue 25: the demo answered "Visitor FAQ When is the building open?").

The answer is the closest sentence, then a second hop adds the sentence closest to the question
*and that first sentence* (as in multi-hop dense retrieval: "the wife of X" is named in one passage,
her nationality in another; on the HaluEval development set the second hop raised "the answer
contains the reference" from 0.38 to 0.65). With ``Extractor(shorten=True)`` mmrag's offline reader
(:func:`load_reader`) makes it shorter: the sentence it finds answers on its own, alone, and the
answering clause of a long sentence (the span keeps its sentence, :attr:`Sentence.sentence`). It is
off by default: with the reader shipped in issue 25 it cut HaluEval's 0.65 to 0.41.
An extractive answer cannot invent anything and gives a reader the passages' own words.

Whether to answer at all is a separate, calibrated decision (:class:`AbstentionGate`), a logistic
model over the signals its calibration file names:

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
was fitted on and its cross-validated figures. The offline hallucination detector's verdict on the
answer is applied after the answer exists (see :mod:`mmrag.answering`): a generated answer it judges
hallucinated is replaced by the extractive one (``auto``) or refused (``generate`` with a verifier).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from mmrag.context import ContextBlock
from mmrag.errors import InvalidInputError, MissingDependencyError, ModelUnavailableError
from mmrag.sentences import answer_sentences, clauses
from mmrag.textanalysis import content_words

if TYPE_CHECKING:
    from mmrag.verification import TextEmbedder

log = logging.getLogger(__name__)

#: Every signal the gate can read; a calibration file names the ones it was fitted on.
FEATURES = ("block_cos", "coverage", "sentence_cos", "answerability")
#: The calibration that ships with mmrag (see its ``fitted_on``).
DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "assets" / "abstention.json"
#: The reader's own decision point: it estimates P(the passage answers the question), so a passage
#: or a span "answers" from 0.5 on (equal costs; nothing fitted).
ANSWERS = 0.5

class Reader(Protocol):
    """What the extractor needs from mmrag's offline reader (:class:`mmrag.reader.OfflineReader`)."""

    def answerability(self, question: str, passages: Sequence[str]) -> list[float]: ...


def load_reader(device: str = "cpu") -> Any:
    """mmrag's offline reader, loaded once per process and shared (the CLI's and the server's answerers).

    The reader ships in the package; a missing or damaged copy is an install error, not a reason to
    answer without it (the gate's calibration reads its answerability).

    Raises:
        ModelUnavailableError: the reader's weights cannot be loaded.
    """
    return _load_reader(device)


@functools.lru_cache(maxsize=2)
def _load_reader(device: str) -> Any:
    try:
        from mmrag.reader import OfflineReader
    except ImportError as exc:
        raise MissingDependencyError(f"mmrag's offline reader (mmrag.reader) does not import ({exc}): "
                                     "reinstall mmrag") from exc
    try:
        return OfflineReader.load(device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelUnavailableError(f"mmrag's offline reader cannot be loaded ({exc}); it ships in the package "
                                    "(src/mmrag/reader): reinstall mmrag") from exc


@dataclass(frozen=True)
class Sentence:
    """A sentence (or the span of it that answers) of one context block, and its cosine to the question."""

    block: int  # the block's number (ContextBlock.n)
    text: str
    score: float
    #: The whole sentence when ``text`` is a span of it; empty when ``text`` is the sentence.
    sentence: str = ""


@dataclass(frozen=True)
class Extraction:
    """The best-supported sentences for a question, and the features the gate reads."""

    sentences: tuple[Sentence, ...]  # by cosine to the question, best first
    block_cos: float
    coverage: float
    #: The answer: the best sentence (or its answering span), then the second hop's when there is one.
    chosen: tuple[Sentence, ...] = ()
    #: The reader's P(this block answers the question), per text block in block order (no reader: empty).
    block_answerability: tuple[float, ...] = ()

    @property
    def best(self) -> Sentence:
        return self.sentences[0]

    @property
    def answerability(self) -> float | None:
        """The reader's best P(a block answers the question); None without a reader."""
        return max(self.block_answerability) if self.block_answerability else None

    def features(self) -> dict[str, float]:
        """The gate's inputs, by name (see :data:`FEATURES`; ``answerability`` only with a reader)."""
        out = {"block_cos": self.block_cos, "coverage": self.coverage, "sentence_cos": self.best.score}
        if self.answerability is not None:
            out["answerability"] = self.answerability
        return out


class Extractor:
    """Ranks the sentences of the retrieved text blocks by their cosine to the question.

    Args:
        embedder: unit-norm text vectors (the knowledge base's text model).
        reader: mmrag's offline reader (:func:`load_reader`). With it the extraction carries each
            block's answerability (the gate's main signal).
        shorten: let the reader choose the answer too: of the ``candidates`` sentences closest to
            the question, the one it finds answers best on its own is the answer, alone when it
            does answer, and a long sentence is cut to the clause that answers. Off by default:
            with the reader shipped in issue 25 it lowered "the answer contains the reference" on
            the HaluEval development set from 0.65 to 0.41 (one sentence where two were needed).
        hops: sentences in the answer: 1 (the closest to the question) or 2 (then the closest to
            the question followed by the first; module docstring).
        min_words: sentences with fewer words are not answers ("See also.", a bare heading).
        span_words: a chosen sentence longer than this is cut to its answering clause (with a reader).
        candidates: sentences (closest to the question first) that the reader reads on their own.
    """

    def __init__(self, embedder: TextEmbedder, *, reader: Reader | None = None, hops: int = 2, min_words: int = 3,
                 span_words: int = 30, candidates: int = 4, shorten: bool = False) -> None:
        if hops not in (1, 2):
            raise InvalidInputError(f"hops must be 1 or 2, got {hops}")
        if candidates < 1:
            raise InvalidInputError(f"candidates must be at least 1, got {candidates}")
        self.embedder, self.reader = embedder, reader
        self.hops, self.min_words, self.span_words, self.candidates = hops, min_words, span_words, candidates
        self.shorten = shorten

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
            units += [(b.n, s) for s in answer_sentences(b) if len(s.split()) >= self.min_words]
        if not units:
            return None
        vectors = self.embedder.embed_texts([question, *(b.content for b in text_blocks), *(s for _, s in units)])
        q = vectors[0]
        block_cos = float(np.max(vectors[1:1 + len(text_blocks)] @ q))
        scores = vectors[1 + len(text_blocks):] @ q
        order = np.argsort(-scores, kind="stable")
        sentences = tuple(Sentence(units[i][0], units[i][1], float(scores[i])) for i in order)
        wanted = content_words(question)
        coverage = max((len(wanted & content_words(b.content, drop_discourse=False)) / len(wanted) for b in text_blocks),
                       default=0.0) if wanted else 0.0
        per_block: tuple[float, ...] = ()
        first, alone = 0, False  # the answer's first sentence, as a rank in `sentences`
        if self.reader is not None:
            # One call: every block, then the closest sentences each on its own (which answers without the rest?).
            top = sentences[:self.candidates] if self.shorten else ()
            p = [float(x) for x in self.reader.answerability(question, [*(b.content for b in text_blocks),
                                                                        *(s.text for s in top)])]
            per_block, alone_p = tuple(p[:len(text_blocks)]), p[len(text_blocks):]
            best = int(np.argmax(alone_p)) if alone_p else 0
            if alone_p and alone_p[best] >= ANSWERS:
                first, alone = best, True
        chosen = (sentences[first],)
        if self.hops == 2 and len(sentences) > 1 and not alone:
            hop = self.embedder.embed_texts([f"{question} {sentences[first].text}"])[0]
            rest = [int(i) for rank, i in enumerate(order) if rank != first]
            second = max(rest, key=lambda i: (float(vectors[1 + len(text_blocks) + i] @ hop), -rest.index(i)))
            chosen += (Sentence(units[second][0], units[second][1], float(scores[second])),)
        chosen = tuple(self._shorten(question, s) for s in chosen)
        return Extraction(sentences, block_cos, coverage, chosen, per_block)

    def _shorten(self, question: str, sentence: Sentence) -> Sentence:
        """The clause of a long sentence that the reader finds answers on its own, else the sentence."""
        if self.reader is None or not self.shorten or len(sentence.text.split()) <= self.span_words:
            return sentence
        parts = clauses(sentence.text)
        if len(parts) < 2:
            return sentence
        p = [float(x) for x in self.reader.answerability(question, parts)]
        best = int(np.argmax(p))
        if p[best] < ANSWERS:
            return sentence
        return Sentence(sentence.block, parts[best], sentence.score, sentence.text)


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
            (:mod:`mmrag.grounding`; the answerer runs it once the probability says "answer").
    """

    def __init__(self, coef: Sequence[float], intercept: float, mean: Sequence[float], scale: Sequence[float], *,
                 features: Sequence[str] = FEATURES, threshold: float = 0.5, min_answerability: float | None = None,
                 calibration: str = "", text_model: str = "", grounding: str | None = None) -> None:
        from mmrag.grounding import SCOPES

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
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "calibration",
                  threshold: float | None = None) -> "AbstentionGate":
        """Build a gate from a calibration file's contents (see ``eval/calibrate_abstention.py``)."""
        try:
            floor = data.get("min_answerability")
            return cls(data["coef"], data["intercept"], data["mean"], data["scale"], features=list(data["features"]),
                       threshold=float(data["threshold"] if threshold is None else threshold),
                       min_answerability=None if floor is None else float(floor),
                       calibration=str(data.get("fitted_on", "")), text_model=str(data.get("text_model", "")),
                       grounding=data.get("grounding"))
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}; write one with eval/calibrate_abstention.py") from exc
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
def _shipped(threshold: float | None) -> AbstentionGate:
    data = json.loads(DEFAULT_CALIBRATION.read_text(encoding="utf-8"))
    return AbstentionGate.from_dict(data, where=str(DEFAULT_CALIBRATION), threshold=threshold)


def _require_signals(names: Sequence[str], features: Mapping[str, float]) -> None:
    missing = [f for f in names if f not in features]
    if missing:
        raise InvalidInputError(f"the abstention gate reads {', '.join(missing)}, which the extraction lacks: "
                                "build the Extractor with reader=load_reader() (mmrag's offline reader)")
