"""Evaluation: retrieval metrics, the full evaluation run, its reports, and run comparison.

Modules:

* :mod:`~mmrag.evaluation.dataset`: the JSONL dataset format (:func:`load_dataset`).
* :mod:`~mmrag.evaluation.ranking`: rank metrics and :func:`evaluate_retrieval` (``mmrag eval retrieval``).
* :mod:`~mmrag.evaluation.runner`: :func:`run_evaluation`: retrieve, answer, verify, judge.
* :mod:`~mmrag.evaluation.suite`: :func:`evaluate_dataset` (``mmrag eval run``): the wiring from a knowledge base.
* :mod:`~mmrag.evaluation.ragas_metrics`: ragas behind timeouts and mmrag's errors (imported lazily).
* :mod:`~mmrag.evaluation.report` and :mod:`~mmrag.evaluation.html`: JSON, Markdown and HTML reports.
* :mod:`~mmrag.evaluation.compare`: ``mmrag eval compare`` and the ``--fail-under`` gates.
* :mod:`~mmrag.evaluation.hallucination`: ``mmrag eval hallucination``: the detector scored on labelled
  answers, with a cross-validated threshold (scikit-learn).

Nothing here imports ragas at import time: ragas is only needed once a run starts.
"""

from mmrag.evaluation.compare import Comparison, Gate, GateResult, check_gates, compare_runs, parse_gates
from mmrag.evaluation.dataset import EvalQuery, load_dataset
from mmrag.evaluation.ragas_metrics import JudgeConfig
from mmrag.evaluation.ranking import (
    RetrievalReport,
    evaluate_retrieval,
    ndcg_at,
    precision_at,
    rank_documents,
    recall_at,
    reciprocal_rank,
)
from mmrag.evaluation.report import load_report, render_markdown, write_reports
from mmrag.evaluation.runner import EvalConfig, EvalRun, run_evaluation
from mmrag.evaluation.suite import evaluate_dataset

__all__ = [
    "Comparison", "EvalConfig", "EvalQuery", "EvalRun", "Gate", "GateResult", "JudgeConfig", "RetrievalReport",
    "check_gates", "compare_runs", "evaluate_dataset", "evaluate_retrieval", "load_dataset", "load_report", "ndcg_at", "parse_gates",
    "precision_at", "rank_documents", "recall_at", "reciprocal_rank", "render_markdown", "run_evaluation",
    "write_reports",
]
