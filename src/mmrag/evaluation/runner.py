"""The evaluation run: retrieve, answer, verify and judge every query of a dataset.

For each query the runner

1. ranks documents (:func:`~mmrag.evaluation.ranking.rank_documents`) and scores the ranking: the
   rank metrics (precision@k, recall@k, MRR, nDCG@10) and ragas' context precision/recall from ids;
2. for the queries chosen to be answered (``limit``/``sample``/``seed``; image-only queries have no
   question and are never answered), answers from the top ``answer_k`` documents with an
   :class:`~mmrag.answering.Answerer`;
3. checks each answer that is not an abstention for unsupported claims: with the offline detector
   by default, with the judge's ragas faithfulness when a judge is given (hallucinated = faithfulness
   below 1);
4. with a judge, scores ragas' LLM metrics.

A failure on one query (a model error, a timeout) is recorded in that query's row and the run goes
on. Every figure in the result names its producer.
"""

from __future__ import annotations

import asyncio
import platform
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Coroutine, Sequence

from mmrag.answering import without_markers
from mmrag.errors import InvalidInputError, MmragError
from mmrag.evaluation.answers import ANSWER_PRODUCER
from mmrag.evaluation.answers import METHODS as ANSWER_METHODS
from mmrag.evaluation.answers import answer_scores
from mmrag.evaluation.dataset import EvalQuery
from mmrag.evaluation.ragas_metrics import JUDGE_METHODS, IdMetrics, Judge, image_data_uri
from mmrag.evaluation.ranking import rank_documents, rank_metric_names, rank_scores
from mmrag.types import Hit

#: Producer of the figures mmrag computes itself.
RANK_PRODUCER = "mmrag rank metrics (ids, no LLM)"
OFFLINE_DETECTOR = "offline detector"
GUARD_PRODUCER = "mmrag grounding guard"
#: Metrics where a lower value is better (everything else: higher is better).
LOWER_IS_BETTER = frozenset({"hallucination_rate", "abstention_rate"})
SNIPPET_CHARS = 300

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation run does.

    Args:
        k: documents scored per query (precision@k, recall@k; nDCG is always at 10).
        retriever: ``clip``, ``text``, ``bm25`` or ``hybrid``.
        answer: generate answers (False scores retrieval only).
        answer_k: top documents given to the answer model as context.
        limit: evaluate only the first ``limit`` queries of the dataset.
        sample: answer (and judge) a random sample of this many queries; None answers all.
        seed: the sample's seed, so a run can be repeated.
        exclude_self: drop an image query's own file from its ranking.
    """

    k: int = 10
    retriever: str = "hybrid"
    answer: bool = True
    answer_k: int = 5
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    exclude_self: bool = True


@dataclass
class EvalRun:
    """The result of :func:`run_evaluation`: everything the reports show, JSON-ready via :meth:`to_dict`.

    ``metrics`` maps a metric name to ``{"mean", "n", "producer", "method", "higher_is_better"}``;
    ``rows`` holds one dict per query (its retrieved items, scores, answer, verdict and errors).
    """

    dataset: str
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    counts: dict[str, Any]
    timings: dict[str, float]
    versions: dict[str, str]
    models: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable form (what ``report.json`` holds)."""
        return {"schema": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalRun":
        """Rebuild a run from :meth:`to_dict` output (a ``report.json``)."""
        fields = {k: data[k] for k in ("dataset", "config", "metrics", "rows", "counts", "timings", "versions")}
        return cls(**fields, models=data.get("models", {}), created=data.get("created", ""))


def run_evaluation(searcher: Any, queries: Sequence[EvalQuery], config: EvalConfig = EvalConfig(), *,
                   answerer: Any = None, detector: Any = None, judge: Judge | None = None,
                   dataset: str = "", models: dict[str, Any] | None = None,
                   progress: Progress | None = None) -> EvalRun:
    """Evaluate ``queries`` end to end (see the module docstring).

    Args:
        searcher: a :class:`~mmrag.retrieval.Searcher` over the collection that holds the corpus.
        queries: the dataset (:func:`~mmrag.evaluation.load_dataset`).
        config: what to run.
        answerer: an :class:`~mmrag.answering.Answerer`; required when ``config.answer`` is set.
        detector: a hallucination detector (``verify(context, answer, question)``); used when no
            judge is given.
        judge: ragas' LLM metrics; its faithfulness then decides the hallucination rate.
        dataset: the dataset's name or path, for the report.
        models: names of the models involved, for the report.
        progress: called with (stage, done, total).

    Returns:
        The run; per-query failures are in each row's ``errors``.

    Raises:
        InvalidInputError: an empty dataset or an inconsistent config.
        MissingDependencyError: ragas is not installed.
    """
    if config.answer and answerer is None:
        raise InvalidInputError("config.answer is set but no answerer was given")
    queries = list(queries)[: config.limit] if config.limit else list(queries)
    if not queries:
        raise InvalidInputError("No queries to evaluate")
    id_metrics = IdMetrics()  # needs ragas: fail before the long part, not after it
    started = time.perf_counter()
    timings: dict[str, float] = {}
    tick = progress or (lambda stage, done, total: None)

    rows, hits_by_row = _retrieve(searcher, queries, config, tick)
    t = time.perf_counter()
    _run_async(_id_scores(id_metrics, queries, rows))
    timings["retrieval_s"] = t - started
    timings["id_metrics_s"] = time.perf_counter() - t

    chosen = choose_answered(queries, config)
    answers: dict[int, Any] = {}
    if config.answer:
        t = time.perf_counter()
        for n, i in enumerate(chosen, 1):
            answers[i] = _answer(answerer, queries[i], hits_by_row[i][: config.answer_k], rows[i])
            tick("answer", n, len(chosen))
        timings["answer_s"] = time.perf_counter() - t
    if config.answer and judge is None and detector is not None:
        t = time.perf_counter()
        for n, i in enumerate(chosen, 1):
            _verify(detector, queries[i], answers.get(i), rows[i])
            tick("verify", n, len(chosen))
        timings["verify_s"] = time.perf_counter() - t
    if judge is not None and chosen:
        t = time.perf_counter()
        _run_async(_judge_all(judge, queries, chosen, answers, hits_by_row, rows, config, tick))
        timings["judge_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    hallucination_producer = judge.producer if judge is not None else (OFFLINE_DETECTOR if detector else None)
    metrics = _summarise(rows, config, judge, hallucination_producer)
    counts = {
        "queries": len(queries), "text_queries": sum(1 for q in queries if q.text),
        "image_queries": sum(1 for q in queries if q.image), "answered": len(answers),
        "answer_selection": _selection_note(config, len(chosen)),
        "abstained": sum(1 for r in rows if r["answer"] and r["answer"]["abstained"]),
        "judged": len(chosen) if judge is not None else 0,
        "failed_queries": sum(1 for r in rows if r["errors"]),
    }
    cfg = {**asdict(config), "judge": asdict(judge.config) if judge is not None else None,
           "answer_model": getattr(answerer, "model_name", None) if config.answer else None,
           "answer_mode": getattr(answerer, "mode", None) if config.answer else None,
           "hallucination_producer": hallucination_producer}
    return EvalRun(dataset=dataset, config=cfg, metrics=metrics, rows=rows, counts=counts, timings=timings,
                   versions=_versions(), models=dict(models or {}),
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def choose_answered(queries: Sequence[EvalQuery], config: EvalConfig) -> list[int]:
    """Indices of the queries to answer: those with text, sampled with ``config.seed`` when asked."""
    eligible = [i for i, q in enumerate(queries) if q.text and q.text.strip()]
    if config.sample is not None and config.sample < len(eligible):
        eligible = sorted(random.Random(config.seed).sample(eligible, config.sample))
    return eligible


def _selection_note(config: EvalConfig, n: int) -> str:
    if not config.answer:
        return "not answered (--no-answer)"
    if config.sample is not None:
        return f"{n} sampled with seed {config.seed} (queries with text only)"
    return f"all {n} queries with text"


# -- stages ---------------------------------------------------------------------------------------
def _retrieve(searcher: Any, queries: Sequence[EvalQuery], config: EvalConfig,
              tick: Progress) -> tuple[list[dict[str, Any]], list[list[Hit]]]:
    depth = max(config.k, 10, config.answer_k)
    rows, all_hits = [], []
    for n, q in enumerate(queries, 1):
        row: dict[str, Any] = {"id": q.id, "query": q.text, "image": q.image, "relevant": sorted(q.relevant),
                               "reference": q.reference, "retrieved": [], "scores": {}, "answer": None,
                               "hallucination": None, "errors": []}
        hits: list[Hit] = []
        try:
            hits = rank_documents(searcher, q, retriever=config.retriever, depth=depth,
                                  exclude_self=config.exclude_self)
        except MmragError as exc:
            _fail(row, "retrieval", exc)
        ranked = [h.doc_id for h in hits]
        if q.relevant:  # an unanswerable query has no gold document to rank
            row["scores"].update(rank_scores(ranked, q.relevant, config.k))
        row["retrieved"] = [_item(h, q.relevant) for h in hits[: config.k]]
        rows.append(row)
        all_hits.append(hits)
        tick("retrieve", n, len(queries))
    return rows, all_hits


async def _id_scores(metrics: IdMetrics, queries: Sequence[EvalQuery], rows: list[dict[str, Any]]) -> None:
    for q, row in zip(queries, rows):
        if not q.relevant:
            continue
        try:
            row["scores"].update(await metrics.ascore([r["doc_id"] for r in row["retrieved"]], sorted(q.relevant)))
        except MmragError as exc:
            _fail(row, "context_ids", exc)


def _answer(answerer: Any, q: EvalQuery, hits: list[Hit], row: dict[str, Any]) -> Any:
    t = time.perf_counter()
    try:
        answer = answerer.answer(q.text or "", hits)
    except MmragError as exc:
        _fail(row, "answer", exc)
        return None
    row["answer"] = {"text": answer.text, "abstained": answer.abstained, "guard": answer.guard,
                     "model": answer.model, "raw_text": answer.raw_text,
                     "citations": [c.doc_id for c in answer.citations],
                     "contexts": [b.content for b in answer.blocks], "latency_s": time.perf_counter() - t,
                     "mode": getattr(answer, "mode", "generate"), "abstention": getattr(answer, "abstention", None),
                     "signals": getattr(answer, "signals", None)}
    row["scores"]["abstained"] = 1.0 if answer.abstained else 0.0
    row["answerable"] = q.answerable
    row["scores"].update(answer_scores(row["answer"], reference=q.reference, relevant=q.relevant,
                                       answerable=q.answerable))
    return answer


def _verify(detector: Any, q: EvalQuery, answer: Any, row: dict[str, Any]) -> None:
    if answer is None or answer.abstained:
        return  # an abstention makes no claim
    contexts = [b.content for b in answer.blocks]
    try:
        verdict = detector.verify(contexts, without_markers(answer.text), q.text)
    except MmragError as exc:
        _fail(row, "verify", exc)
        return
    sentences = list(getattr(verdict, "sentences", ()))
    # An answer can be hallucinated with no single sentence over the threshold (the score sums what
    # every sentence adds), so the report also shows the least supported sentences and why.
    weakest = sorted((x for x in sentences if x.support < 1.0), key=lambda x: x.support)[:3]
    row["hallucination"] = {"producer": OFFLINE_DETECTOR, "hallucinated": bool(verdict.hallucinated),
                            "score": float(verdict.score), "unsupported": [x.text for x in sentences if not x.supported],
                            "weakest": [{"text": x.text, "support": round(float(x.support), 4),
                                         "reasons": list(getattr(x, "reasons", ()))} for x in weakest]}
    row["scores"]["hallucinated"] = 1.0 if verdict.hallucinated else 0.0


async def _judge_all(judge: Judge, queries: Sequence[EvalQuery], chosen: Sequence[int], answers: dict[int, Any],
                     hits_by_row: list[list[Hit]], rows: list[dict[str, Any]], config: EvalConfig,
                     tick: Progress) -> None:
    gate = asyncio.Semaphore(max(1, judge.config.concurrency))
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        q, row, answer = queries[i], rows[i], answers.get(i)
        hits = hits_by_row[i][: config.answer_k]
        if answer is not None and answer.blocks:
            contexts = [b.content for b in answer.blocks]
            used = [b.hit for b in answer.blocks]
        else:
            contexts, used = [_context_text(h) for h in hits], hits
        media = [(image_data_uri(h) if h.modality == "image" else None) or c for h, c in zip(used, contexts)]
        text = answer.text if answer is not None and not answer.abstained else None
        async with gate:
            scores, errors = await judge.ascore(question=q.text, answer=text, contexts=contexts, media=media,
                                                reference=q.reference)
        row["scores"].update(scores)
        for name, message in errors.items():
            row["errors"].append({"stage": f"judge:{name}", "message": message})
        if text is not None and scores.get("faithfulness") is not None:
            hallucinated = scores["faithfulness"] < 1.0
            row["hallucination"] = {"producer": judge.producer, "hallucinated": hallucinated,
                                    "score": 1.0 - scores["faithfulness"], "unsupported": []}
            row["scores"]["hallucinated"] = 1.0 if hallucinated else 0.0
        done += 1
        tick("judge", done, len(chosen))

    await asyncio.gather(*(one(i) for i in chosen))


# -- summary --------------------------------------------------------------------------------------
def _summarise(rows: list[dict[str, Any]], config: EvalConfig, judge: Judge | None,
               hallucination_producer: str | None) -> dict[str, dict[str, Any]]:
    info: dict[str, tuple[str, str]] = {name: (RANK_PRODUCER, "mmrag.evaluation.ranking") for name in rank_metric_names(config.k)}
    info["context_precision"] = (IdMetrics.producer, "ragas IDBasedContextPrecision over the top-k doc ids")
    info["context_recall"] = (IdMetrics.producer, "ragas IDBasedContextRecall over the top-k doc ids")
    if config.answer:
        info["abstention_rate"] = (GUARD_PRODUCER, "share of answered queries where the answer abstained")
        # Only the answer metrics some row has: a dataset without references or unanswerable
        # questions gets no empty columns (and a gate on a missing metric fails, as it should).
        present = {k for r in rows for k in r["scores"]}
        for name, method in ANSWER_METHODS.items():
            if name in present:
                info[name] = (ANSWER_PRODUCER, method)
    if hallucination_producer:
        method = ("answers (abstentions excluded) with a ragas faithfulness below 1" if judge is not None
                  else "answers (abstentions excluded) with a sentence the retrieved context does not support")
        info["hallucination_rate"] = (hallucination_producer, method)
    if judge is not None:
        for name in judge.metric_names():
            info[name] = (judge.producer, JUDGE_METHODS[name])
    source = {"abstention_rate": "abstained", "hallucination_rate": "hallucinated"}
    out = {}
    for name, (producer, method) in info.items():
        values = [r["scores"][source.get(name, name)] for r in rows
                  if r["scores"].get(source.get(name, name)) is not None]
        out[name] = {"mean": sum(values) / len(values) if values else None, "n": len(values),
                     "producer": producer, "method": method, "higher_is_better": name not in LOWER_IS_BETTER}
    return out


# -- helpers --------------------------------------------------------------------------------------
def _item(hit: Hit, relevant: frozenset[str]) -> dict[str, Any]:
    text = " ".join((hit.text or "").split())
    return {"doc_id": hit.doc_id, "score": round(float(hit.score), 6), "modality": hit.modality,
            "source": hit.source, "page": hit.page, "relevant": hit.doc_id in relevant,
            "text": text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")}


def _context_text(hit: Hit) -> str:
    if hit.modality == "text":
        return " ".join((hit.text or "").split())
    page = f", page {hit.page}" if hit.page is not None else ""
    return f"Image from document {hit.doc_id}{page}"


def _fail(row: dict[str, Any], stage: str, exc: Exception) -> None:
    row["errors"].append({"stage": stage, "message": f"{type(exc).__name__}: {exc}"})


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to the end, also from inside a running event loop (Jupyter) via a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("mmrag", "ragas", "litellm", "chromadb", "open-clip-torch", "sentence-transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out
