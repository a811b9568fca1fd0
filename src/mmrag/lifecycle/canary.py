"""The canary gate a promote passes: the candidate version measured against the live one.

:func:`gate` runs the knowledge base's probes on both versions and, when an evaluation dataset is
given, its retrieval metrics too (precision@k, recall@k, MRR, nDCG@10 from
:func:`mmrag.evaluation.evaluate_retrieval`: ids only, no LLM, no judge). Every metric is higher-is-better;
one that drops from live to candidate by more than the budget (``lifecycle.canary_budget``) fails
the gate. Probe latency is shown but not gated: it is too noisy on a shared host to refuse a
promote on.

Example:
    >>> result = gate(live_kb, candidate_kb, ProbeStore(m).list("docs"), settings=settings)  # doctest: +SKIP
    >>> if not result.passed:                                                                 # doctest: +SKIP
    ...     print(result.render())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mmrag.config import Settings
from mmrag.errors import InvalidInputError
from mmrag.lifecycle.probes import DEFAULT_RETRIEVER, Probe, ProbeReport, run_probes

if TYPE_CHECKING:
    from mmrag.kb import KnowledgeBase
    from mmrag.retrieval import Searcher

#: A float drop this small is rounding, not a regression.
_EPSILON = 1e-9


@dataclass(frozen=True)
class MetricDelta:
    """One metric on both versions."""

    name: str
    live: float | None
    candidate: float | None
    budget: float

    @property
    def delta(self) -> float | None:
        """Candidate minus live (negative: the candidate is worse)."""
        return None if self.live is None or self.candidate is None else self.candidate - self.live

    @property
    def passed(self) -> bool:
        """The metric did not drop by more than the budget (a metric one side lacks is not compared)."""
        return self.delta is None or self.delta >= -self.budget - _EPSILON

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "live": self.live, "candidate": self.candidate, "delta": self.delta,
                "budget": self.budget, "passed": self.passed}


@dataclass(frozen=True)
class CanaryResult:
    """What the gate measured and decided.

    ``regressed`` names the probes that fail on the candidate but pass on the live version (what the
    candidate broke); ``failing`` names every probe that fails on the candidate (broken before too).
    """

    metrics: tuple[MetricDelta, ...]
    budget: float
    live_probes: ProbeReport
    candidate_probes: ProbeReport
    live_label: str = "live"
    candidate_label: str = "candidate"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """No metric dropped by more than the budget."""
        return all(m.passed for m in self.metrics)

    @property
    def failing(self) -> list[str]:
        """Every probe that fails on the candidate."""
        return self.candidate_probes.failed

    @property
    def regressed(self) -> list[str]:
        """Probes that fail on the candidate and pass on the live version."""
        live_failed = set(self.live_probes.failed)
        return [name for name in self.candidate_probes.failed if name not in live_failed]

    @property
    def dropped(self) -> list[str]:
        """Names of the metrics that dropped by more than the budget."""
        return [m.name for m in self.metrics if not m.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json`` and the HTTP API)."""
        return {"passed": self.passed, "budget": self.budget, "live": self.live_label,
                "candidate": self.candidate_label, "metrics": [m.to_dict() for m in self.metrics],
                "dropped": self.dropped, "regressed_probes": self.regressed, "failing_probes": self.failing,
                "probes": {"live": self.live_probes.to_dict(), "candidate": self.candidate_probes.to_dict()},
                "notes": list(self.notes)}

    def render(self) -> str:
        """A text table for the CLI: each metric on both versions, then the probes that fail."""
        width = max([len(m.name) for m in self.metrics] + [6])
        lines = [f"{'metric':<{width}}  {self.live_label:>12}  {self.candidate_label:>12}  {'delta':>8}"]
        for m in self.metrics:
            flag = "" if m.passed else f"  DROPPED (budget {m.budget:g})"
            lines.append(f"{m.name:<{width}}  {_num(m.live):>12}  {_num(m.candidate):>12}  "
                         f"{'—' if m.delta is None else format(m.delta, '+.4f'):>8}{flag}")
        latency = (f"probe latency p50 {self.live_probes.p50_latency_s * 1000:.1f} ms -> "
                   f"{self.candidate_probes.p50_latency_s * 1000:.1f} ms (not gated)")
        lines.append(latency)
        for name in self.failing:
            result = self.candidate_probes.result(name)
            was = "" if name in self.regressed else " (fails on the live version too)"
            why = (result.error if result and result.error
                   else f"missing {', '.join(result.missing)}" if result else "")
            lines.append(f"probe {name} FAILS on {self.candidate_label}: {why}{was}")
        lines.extend(self.notes)
        lines.append("canary gate: " + ("passed" if self.passed else f"REFUSED: {', '.join(self.dropped)} dropped "
                                        f"by more than {self.budget:g}"))
        return "\n".join(lines)


def gate(live_kb: "KnowledgeBase | Searcher", candidate_kb: "KnowledgeBase | Searcher", probes: Sequence[Probe], *,
         settings: Settings, eval_dataset: Path | None = None, budget: float | None = None,
         retriever: str = DEFAULT_RETRIEVER, live_label: str = "live",
         candidate_label: str = "candidate") -> CanaryResult:
    """Measure the candidate against the live version and decide whether it may be promoted.

    Args:
        live_kb: the live version (a knowledge base, or a searcher over it).
        candidate_kb: the version to promote.
        probes: the knowledge base's probes (:meth:`~mmrag.lifecycle.probes.ProbeStore.list`).
        settings: fusion settings (``retrieval``), the budget (``lifecycle.canary_budget``) and ``k``
            of the evaluation metrics (``retrieval.k``).
        eval_dataset: an evaluation dataset (JSONL, as ``mmrag eval run`` reads) also run on both;
            promote passes ``settings.lifecycle.eval_dataset``.
        budget: overrides ``settings.lifecycle.canary_budget``.
        retriever: the retriever probes and evaluation use.
        live_label: how the live version is named in the table (``docs@1``).
        candidate_label: likewise for the candidate.

    Returns:
        The result; ``passed`` is False when a metric dropped by more than the budget.

    Raises:
        NotFoundError: ``eval_dataset`` does not exist.
        InvalidInputError: the dataset is invalid or has no answerable query; a budget outside 0..1.
    """
    budget = settings.lifecycle.canary_budget if budget is None else float(budget)
    if not 0 <= budget <= 1:
        raise InvalidInputError(f"the canary budget must be between 0 and 1, got {budget}")
    live, candidate = _searcher(live_kb, settings), _searcher(candidate_kb, settings)
    live_report = run_probes(live, probes, retriever=retriever)
    candidate_report = run_probes(candidate, probes, retriever=retriever)
    metrics: list[MetricDelta] = []
    notes: list[str] = []
    if probes:
        metrics.append(MetricDelta("probe_recall", live_report.recall, candidate_report.recall, budget))
    if eval_dataset is not None:
        live_eval = _evaluate(live, eval_dataset, settings.retrieval.k, retriever)
        candidate_eval = _evaluate(candidate, eval_dataset, settings.retrieval.k, retriever)
        metrics.extend(MetricDelta(f"eval:{name}", live_eval[name], candidate_eval.get(name), budget)
                       for name in live_eval)
    if not metrics:
        notes.append("no probes and no evaluation dataset: nothing was compared (add probes with `mmrag probes add`)")
    return CanaryResult(tuple(metrics), budget, live_report, candidate_report, live_label, candidate_label,
                        tuple(notes))


def _searcher(kb: "KnowledgeBase | Searcher", settings: Settings) -> "Searcher":
    from mmrag.retrieval import Searcher

    return kb if isinstance(kb, Searcher) else Searcher.from_settings(kb, settings.retrieval)


def _evaluate(searcher: "Searcher", dataset: Path, k: int, retriever: str) -> dict[str, float]:
    from mmrag.evaluation import evaluate_retrieval, load_dataset

    # Unanswerable questions have no gold document to rank (as in `mmrag eval run`).
    queries = [q for q in load_dataset(Path(dataset)) if q.relevant]
    if not queries:
        raise InvalidInputError(f"{dataset}: no query with relevant documents; the canary gate needs at least one")
    return evaluate_retrieval(searcher, queries, retriever=retriever, k=k).metrics


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
