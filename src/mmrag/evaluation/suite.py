"""Wiring for a whole evaluation: a knowledge base and a dataset in, an :class:`EvalRun` out.

``mmrag eval run`` and the evaluation notebook both call :func:`evaluate_dataset`; it builds the
answer model, the hallucination detector and the judge from plain arguments, so the CLI stays thin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrag.evaluation.dataset import load_dataset
from mmrag.evaluation.ragas_metrics import Judge, JudgeConfig, import_ragas
from mmrag.evaluation.runner import EvalConfig, EvalRun, Progress, run_evaluation

DEFAULT_ANSWER_MODEL = "mmrag-local/smollm2-135m"


def evaluate_dataset(kb: Any, dataset: Path, config: EvalConfig = EvalConfig(), *,
                     answer_model: str = DEFAULT_ANSWER_MODEL, answer_timeout: float = 60.0,
                     answer_retries: int = 2, judge: JudgeConfig | None = None, detector: Any = "offline",
                     searcher: Any = None, progress: Progress | None = None, answer_mode: str | None = None,
                     settings: Any = None) -> EvalRun:
    """Evaluate ``dataset`` against the knowledge base ``kb``.

    Args:
        kb: a :class:`~mmrag.kb.KnowledgeBase` that holds the dataset's corpus.
        dataset: the JSONL dataset (see :mod:`mmrag.evaluation.dataset`).
        config: what to run (k, retriever, answering, sampling).
        answer_model: a LiteLLM model string for the answers; ``mmrag-local/...`` runs in-process.
        answer_timeout: seconds per answer call.
        answer_retries: litellm retries per answer call.
        judge: the LLM judge; None runs no LLM metric (and nothing leaves the machine unless
            ``answer_model`` is remote).
        detector: ``"offline"`` for mmrag's hallucination detector on the collection's text model,
            an object with ``verify(context, answer, question)``, or None. Ignored with a judge,
            whose faithfulness then decides the hallucination rate.
        searcher: a configured :class:`~mmrag.retrieval.Searcher` over ``kb`` (fusion weights...);
            None builds one with the defaults.
        progress: called with (stage, done, total).
        answer_mode: ``generate``, ``extractive`` or ``auto``; None: the settings' choice, else the
            default for ``answer_model`` (see :func:`mmrag.registry.answer_mode`).
        settings: :class:`~mmrag.config.Settings` for the answer mode and the abstention gate;
            None: the defaults.

    Raises:
        MissingDependencyError: ragas (the ``eval`` extra) is not installed.
        InvalidInputError, NotFoundError: a bad dataset or config.
    """
    from mmrag.retrieval import Searcher

    import_ragas()  # a missing eval extra fails here, before any model loads
    queries = load_dataset(Path(dataset))
    searcher = searcher if searcher is not None else Searcher(kb)
    answerer = None
    if config.answer:
        from mmrag.answering import Answerer
        from mmrag.config import Settings
        from mmrag.llms.litellm import LiteLLMChatModel
        from mmrag.registry import answer_options, answer_stop
        from mmrag.registry import answer_mode as resolve_mode

        settings = settings if settings is not None else Settings()
        mode = resolve_mode(settings, answer_model, answer_mode)
        chat = (LiteLLMChatModel(answer_model, timeout=answer_timeout, num_retries=answer_retries)
                if mode != "extractive" else None)
        # The 135M offline model answers on its first line and rambles after it (as `mmrag ask`).
        answerer = Answerer(chat, searcher, k=config.answer_k, retriever=config.retriever,
                            stop=answer_stop(answer_model) if chat else None,
                            **answer_options(settings, kb.text, mode))
    judge_obj = Judge(judge, embedder=kb.text) if judge is not None else None
    if detector == "offline":
        detector = offline_detector(kb) if config.answer and judge_obj is None else None
    models = {"retrieval": kb.models.describe()}
    if answerer is not None:
        models["answers"] = answerer.model_name if answerer.mode == "extractive" else answer_model
        models["answer_mode"] = answerer.mode
    if judge is not None:
        models["judge"] = judge.model
    return run_evaluation(searcher, queries, config, answerer=answerer, detector=detector, judge=judge_obj,
                          dataset=str(dataset), models=models, progress=progress)


def offline_detector(kb: Any) -> Any:
    """mmrag's offline hallucination detector on the collection's text model (MiniLM offline)."""
    from mmrag.answering.verification import HallucinationDetector

    return HallucinationDetector(embedder=kb.text)
