"""Regressions between two runs (``mmrag eval compare``) and CI gates (``mmrag eval run --fail-under``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from mmrag.errors import InvalidInputError
from mmrag.evaluation.runner import EvalRun

_GATE = re.compile(r"^\s*([A-Za-z0-9_@.\-]+)\s*=\s*([0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """``METRIC=VALUE``: the run fails when the metric's mean is below VALUE (above, for rates where
    lower is better, such as ``hallucination_rate``)."""

    metric: str
    value: float


@dataclass(frozen=True)
class GateResult:
    """One gate checked against a run."""

    gate: Gate
    actual: float | None
    passed: bool
    higher_is_better: bool

    def describe(self) -> str:
        """One line for people, e.g. ``precision@10 = 0.21 < 0.30 (FAILED)``."""
        op = ">=" if self.higher_is_better else "<="
        actual = "missing" if self.actual is None else f"{self.actual:.4f}"
        return f"{self.gate.metric} = {actual}, needs {op} {self.gate.value:g}: {'ok' if self.passed else 'FAILED'}"


def parse_gates(specs: Sequence[str]) -> list[Gate]:
    """Parse ``METRIC=VALUE`` strings.

    Raises:
        InvalidInputError: a malformed spec.
    """
    gates = []
    for spec in specs:
        m = _GATE.match(spec)
        if not m:
            raise InvalidInputError(f"Bad gate {spec!r}: write METRIC=VALUE, e.g. precision@10=0.3")
        gates.append(Gate(m.group(1), float(m.group(2))))
    return gates


def check_gates(run: EvalRun, gates: Sequence[Gate]) -> list[GateResult]:
    """Check each gate against the run's metric means. A metric the run lacks fails its gate
    (a gate on a figure that was never computed must not pass silently)."""
    out = []
    for gate in gates:
        m = run.metrics.get(gate.metric)
        actual = m["mean"] if m else None
        hib = m["higher_is_better"] if m else True
        passed = actual is not None and (actual >= gate.value if hib else actual <= gate.value)
        out.append(GateResult(gate, actual, passed, hib))
    return out


@dataclass
class Comparison:
    """What changed from a base run to a new one.

    ``metrics``: name -> ``{"base", "new", "delta", "regressed", "producer"}`` for metrics in both runs.
    ``lost``: query id -> relevant doc ids in the base top k but not in the new one.
    ``regressed_queries``: query ids whose nDCG@10 fell by more than the tolerance.
    """

    metrics: dict[str, dict[str, Any]]
    lost: dict[str, list[str]]
    regressed_queries: list[str]
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    tolerance: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        """True when a metric regressed or a query lost a relevant document."""
        return bool(self.lost) or any(m["regressed"] for m in self.metrics.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"regressed": self.regressed, "tolerance": self.tolerance, "metrics": self.metrics,
                "lost_relevant": self.lost, "regressed_queries": self.regressed_queries,
                "only_in_base": self.only_base, "only_in_new": self.only_new, "warnings": self.warnings}


def compare_runs(base: EvalRun, new: EvalRun, *, tolerance: float = 0.0) -> Comparison:
    """Metric deltas and the queries that lost relevant documents from base to new.

    Args:
        tolerance: a metric (or a query's nDCG@10) regresses only when it worsens by more than this.
    """
    warnings = []
    for key in ("k", "retriever"):
        if base.config.get(key) != new.config.get(key):
            warnings.append(f"{key} differs: base {base.config.get(key)!r}, new {new.config.get(key)!r}")
    metrics: dict[str, dict[str, Any]] = {}
    for name, b in base.metrics.items():
        n = new.metrics.get(name)
        if n is None or b["mean"] is None or n["mean"] is None:
            continue
        delta = n["mean"] - b["mean"]
        worse = -delta if b["higher_is_better"] else delta
        if b["producer"] != n["producer"]:
            warnings.append(f"{name}: produced by {b['producer']!r} in base, {n['producer']!r} in new")
        metrics[name] = {"base": b["mean"], "new": n["mean"], "delta": delta, "regressed": worse > tolerance,
                         "producer": n["producer"]}
    base_rows = {r["id"]: r for r in base.rows}
    new_rows = {r["id"]: r for r in new.rows}
    lost: dict[str, list[str]] = {}
    regressed_queries = []
    for qid, b in base_rows.items():
        n = new_rows.get(qid)
        if n is None:
            continue
        before = {i["doc_id"] for i in b["retrieved"] if i["relevant"]}
        after = {i["doc_id"] for i in n["retrieved"] if i["relevant"]}
        if before - after:
            lost[qid] = sorted(before - after)
        if (b["scores"].get("ndcg@10") or 0.0) - (n["scores"].get("ndcg@10") or 0.0) > tolerance:
            regressed_queries.append(qid)
    return Comparison(metrics=metrics, lost=lost, regressed_queries=regressed_queries,
                      only_base=sorted(set(base_rows) - set(new_rows)), only_new=sorted(set(new_rows) - set(base_rows)),
                      tolerance=tolerance, warnings=warnings)
