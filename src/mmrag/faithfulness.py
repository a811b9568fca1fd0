"""``OfflineFaithfulness``: the offline hallucination detector as a ragas (0.4.3) metric.

ragas' own ``Faithfulness`` needs an LLM judge; this one runs :class:`~mmrag.answering.verification.HallucinationDetector`
(lexical checks plus an optional local text model), so a faithfulness number can be had on an
air-gapped machine. It is a collections metric (``ragas.metrics.collections.base.BaseMetric``, like
ragas' ``ExactMatch``): score it with ``await metric.ascore(...)``, ``metric.score(...)`` or
``abatch_score``, with the same field names as ragas' ``Faithfulness``.

Importing this module needs the eval extra (``pip install 'mmrag[eval]'``); ``import mmrag`` does not.
(``mmrag.evaluation.ragas_metrics`` is something else: ragas' LLM-judged metrics behind timeouts.)

Example:
    >>> metric = OfflineFaithfulness(HallucinationDetector(None))       # doctest: +SKIP
    >>> metric.score(user_input="How tall?", response="It is 330 m tall.",
    ...              retrieved_contexts=["The tower is 330 m tall."]).value  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from typing import Any, Sequence

from mmrag.errors import InvalidInputError, MissingDependencyError
from mmrag.answering.verification import HallucinationDetector, Verdict

# No RAGAS_DO_NOT_TRACK here: importing a module must not change the process's environment, and
# this metric sends nothing (ragas tracks in ``evaluate()`` and its old-style metrics, not in a
# collections metric's ``score``; tests/answering/test_verification.py checks it). mmrag's own ragas runs
# switch analytics off where they import ragas (``mmrag.evaluation.ragas_metrics.import_ragas``).
try:
    from ragas.metrics.collections.base import BaseMetric
    from ragas.metrics.result import MetricResult
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependencyError("The ragas metric needs ragas: pip install 'mmrag[eval]'") from exc


class OfflineFaithfulness(BaseMetric):  # type: ignore[misc]  # ragas ships no type information
    """Share of the answer the context supports: ``1 - verdict.score`` (or 1/0 with ``binary=True``).

    Args:
        detector: the detector to run; default a lexical-only :class:`HallucinationDetector` (pass one
            with a text model, e.g. ``SentenceTransformerEmbedder``, for the better score).
        binary: report 0.0 for a hallucinated answer and 1.0 otherwise, instead of the graded score.
        name: the metric's name in ragas reports.
    """

    def __init__(self, detector: HallucinationDetector | None = None, *, binary: bool = False,
                 name: str = "offline_faithfulness", **base_kwargs: Any) -> None:
        # Set before the base initialiser, which inspects the instance for llm/embeddings fields.
        self.detector = detector if detector is not None else HallucinationDetector(None)
        self.binary = binary
        super().__init__(name=name, **base_kwargs)

    def _result(self, verdict: Verdict) -> Any:
        value = (0.0 if verdict.hallucinated else 1.0) if self.binary else round(1.0 - verdict.score, 6)
        bad = verdict.unsupported
        reason = (f"{len(bad)} of {len(verdict.sentences)} sentences unsupported; hallucination score "
                  f"{verdict.score:.3f} (threshold {self.detector.threshold:.2f})")
        if bad:
            reason += ". First: " + repr(bad[0].text[:200]) + " (" + "; ".join(bad[0].reasons[:2]) + ")"
        return MetricResult(value=value, reason=reason)

    async def ascore(self, response: str, retrieved_contexts: Sequence[str] | str,
                     user_input: str | None = None) -> Any:
        """Score one answer against its retrieved contexts.

        Args:
            response: the answer.
            retrieved_contexts: the passages it should rest on (a list, or one string).
            user_input: the question (its words count as supported).

        Returns:
            A ragas ``MetricResult``: value in [0, 1] (1 = fully supported) and a reason.

        Raises:
            InvalidInputError: no contexts.
        """
        if not retrieved_contexts:
            raise InvalidInputError("retrieved_contexts is empty: faithfulness needs the context")
        return self._result(self.detector.verify(retrieved_contexts, response, user_input))

    async def abatch_score(self, inputs: list[dict[str, Any]]) -> list[Any]:
        """Score many inputs in one :meth:`HallucinationDetector.verify_many` call (one embedding batch)."""
        for row in inputs:
            if not row.get("retrieved_contexts"):
                raise InvalidInputError("retrieved_contexts is empty: faithfulness needs the context")
        verdicts = self.detector.verify_many(
            [(r["retrieved_contexts"], r["response"], r.get("user_input")) for r in inputs])
        return [self._result(v) for v in verdicts]
