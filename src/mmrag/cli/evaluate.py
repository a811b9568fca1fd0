"""The ``mmrag eval`` group: retrieval metrics (and, with the eval extra, the full suite)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, settings_from
from mmrag.cli.query import reranker_from, rerank_options


@main.group(name="eval")
def eval_group() -> None:
    """Evaluate retrieval, answers and hallucinations; compare runs."""


@eval_group.command(name="retrieval")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="clip", show_default=True)
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--weights", metavar="NAME=W,...", default=None,
              help="Hybrid fusion weights, e.g. clip=0.5,text=1,bm25=1; unnamed ones keep their setting. "
                   "[env MMRAG_RETRIEVAL__WEIGHTS__<NAME>; default all 1]")
@rerank_options
@click.option("--no-baseline", is_flag=True,
              help="With --rerank: skip scoring the same retriever without the reranker (by default both are "
                   "scored in the same run, with the difference).")
@common_options
@errors_to_click
def eval_retrieval(dataset: Path, retriever: str, k: int, weights: str | None, rerank: str | None,
                   rerank_depth: int | None, no_baseline: bool, as_json: bool, **opts: Any) -> None:
    """Score document-level retrieval (precision@k, recall@k, MRR, nDCG@10) on DATASET.jsonl.

    Ingests nothing: the collection must already hold the corpus. With --rerank, the same
    retriever without the reranker is scored too, on the same queries and index.
    """
    from mmrag.evaluation import evaluate_retrieval, load_dataset
    from mmrag.retrieval import Searcher

    s = settings_from(opts)
    reranker, depth = reranker_from(s, rerank, rerank_depth)
    searcher = Searcher(open_kb(opts), weights={**s.retrieval.weights.model_dump(), **_parse_weights(weights)},
                        depth=s.retrieval.depth, rrf_k=s.retrieval.rrf_k, reranker=reranker, rerank_depth=depth)
    queries = load_dataset(dataset)
    report = evaluate_retrieval(searcher, queries, retriever=retriever, k=k)
    fusion = {"weights": searcher.weights, "rrf_k": searcher.rrf_k, "depth": searcher.depth}
    reranked: dict[str, Any] | None = None
    if reranker is not None:
        reranked = {"model": reranker.name, "depth": depth}
        if not no_baseline:
            plain = Searcher(searcher.kb, weights=searcher.weights, depth=searcher.depth, rrf_k=searcher.rrf_k)
            base = evaluate_retrieval(plain, queries, retriever=retriever, k=k).metrics
            reranked["without_rerank"] = base
            reranked["delta"] = {name: value - base[name] for name, value in report.metrics.items()}
    if as_json:
        emit({**report.to_dict(), **({"fusion": fusion} if retriever == "hybrid" else {}), "rerank": reranked})
        return
    click.echo(f"{len(report.per_query)} queries, retriever {retriever}, collection {searcher.kb.collection}")
    if retriever == "hybrid":
        click.echo("fusion: " + ", ".join(f"{name}={w:g}" for name, w in searcher.weights.items())
                   + f"; rrf k={searcher.rrf_k}, depth {searcher.depth}")
    if reranked is not None:
        click.echo(f"rerank: {reranked['model']}, top {depth} reread")
    if reranked is not None and "delta" in reranked:
        click.echo(f"{'':>14}  {'rerank':>7}  {'without':>7}  {'delta':>7}")
        for name, value in report.metrics.items():
            click.echo(f"{name:>14}: {value:.4f}  {reranked['without_rerank'][name]:.4f}  {reranked['delta'][name]:+.4f}")
        return
    for name, value in report.metrics.items():
        click.echo(f"{name:>14}: {value:.4f}")


def _parse_weights(spec: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"expected NAME=NUMBER, got {part!r}", param_hint="--weights")
    return out  # names and ranges are checked by Searcher (InvalidInputError names the culprit)


#: Exit status of `mmrag eval run` when a --fail-under gate fails (3 means a partial ingest).
EXIT_GATE_FAILED = 4
#: Exit status of `mmrag eval compare --fail-on-regression` when something regressed.
EXIT_REGRESSED = 4


@eval_group.command(name="run")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder for report.html, report.json and report.md.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Documents scored per query.")
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="hybrid", show_default=True)
@click.option("--model", envvar="MMRAG_LLM__MODEL", default=None,
              help="LiteLLM model for the answers; default the offline mmrag-local/smollm2-135m.")
@click.option("--no-answer", is_flag=True, help="Score retrieval only (no answers, no hallucination rate).")
@click.option("--answer-k", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Top documents given to the answer model.")
@click.option("--answer-mode", type=click.Choice(["generate", "extractive", "auto"]), default=None,
              help="How answers are made (as `mmrag ask`). Default: extractive for the offline model, else generate.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N queries.")
@click.option("--sample", type=click.IntRange(1), default=None,
              help="Answer (and judge) a random sample of N queries; retrieval is scored for all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--judge", envvar="MMRAG_JUDGE", default=None,
              help="LiteLLM model that judges (ragas LLM metrics; its faithfulness then decides the "
                   "hallucination rate). Unset: no judge, no LLM metric. [env MMRAG_JUDGE]")
@click.option("--judge-api-base", envvar="MMRAG_JUDGE_API_BASE", default=None,
              help="OpenAI-compatible base URL for the judge. [env MMRAG_JUDGE_API_BASE]")
@click.option("--judge-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds per judge call.")
@click.option("--judge-vision/--judge-no-vision", default=None,
              help="Whether the judge reads images (ragas multimodal metrics). [default: ask litellm]")
@click.option("--fail-under", "gates", multiple=True, metavar="METRIC=VALUE",
              help="CI gate, repeatable: exit 4 when METRIC's mean is below VALUE (above it for "
                   "hallucination_rate and abstention_rate). Reports are written first.")
@click.option("--max-rows", type=click.IntRange(1), default=200, show_default=True,
              help="Queries shown in the HTML per-query table (report.json has all).")
@common_options
@errors_to_click
def eval_run(dataset: Path, out_dir: Path, k: int, retriever: str, model: str | None, no_answer: bool, answer_k: int,
             answer_mode: str | None, limit: int | None, sample: int | None, seed: int, judge: str | None, judge_api_base: str | None,
             judge_timeout: float, judge_vision: bool | None, gates: tuple[str, ...], max_rows: int,
             as_json: bool, **opts: Any) -> None:
    """Evaluate DATASET.jsonl end to end and write HTML, JSON and Markdown reports to --out.

    Each line holds a query (text and/or image), its relevant doc ids and optionally a reference
    answer. Every query is retrieved and scored (rank metrics, ragas context precision/recall
    from ids); the chosen ones are answered and checked for unsupported claims (offline detector,
    or the judge's ragas faithfulness with --judge). The collection must already hold the corpus.

    Exit status: 0 ok; 1 error; 4 a --fail-under gate failed.
    """
    from mmrag.evaluation import EvalConfig, JudgeConfig, check_gates, parse_gates, write_reports
    from mmrag.evaluation.suite import DEFAULT_ANSWER_MODEL, evaluate_dataset

    from mmrag.evaluation.ragas_metrics import import_ragas

    parsed = parse_gates(gates)  # fail on a typo before a long run, not after
    import_ragas()  # a missing eval extra is named first: no collection makes up for it
    s = settings_from(opts)
    config = EvalConfig(k=k, retriever=retriever, answer=not no_answer, answer_k=answer_k, limit=limit,
                        sample=sample, seed=seed)
    judge_cfg = (JudgeConfig(judge, api_base=judge_api_base, timeout=judge_timeout, vision=judge_vision)
                 if judge else None)
    from mmrag.retrieval import Searcher

    kb = open_kb(opts)
    # sys.stderr as it is, as ingest's progress does: click's get_text_stream rewraps the raw stream
    # and fails (ESPIPE) when stderr is a socket or a pipe it cannot seek.
    with StageProgress(sys.stderr) as progress:
        run = evaluate_dataset(kb, dataset, config, answer_model=model or s.llm.model or DEFAULT_ANSWER_MODEL,
                               answer_timeout=s.llm.timeout, answer_retries=s.llm.num_retries, judge=judge_cfg,
                               searcher=Searcher.from_settings(kb, s.retrieval), progress=None if as_json else progress,
                               answer_mode=answer_mode, settings=s)
    paths = write_reports(run, out_dir, max_rows=max_rows)
    results = check_gates(run, parsed)
    failed = [r for r in results if not r.passed]
    if as_json:
        emit({"reports": {k: str(v) for k, v in paths.items()}, "counts": run.counts,
              "metrics": {n: {"mean": m["mean"], "n": m["n"], "producer": m["producer"]} for n, m in run.metrics.items()},
              "gates": [{"metric": r.gate.metric, "value": r.gate.value, "actual": r.actual, "passed": r.passed}
                        for r in results]})
    else:
        click.echo(f"{run.counts['queries']} queries; answered {run.counts['answered']} "
                   f"({run.counts['answer_selection']}); {run.counts['failed_queries']} with errors")
        for name, m in run.metrics.items():
            mean = "—" if m["mean"] is None else f"{m['mean']:.4f}"
            click.echo(f"{name:>24}: {mean:>7}  (n={m['n']}, {m['producer']})")
        for label, path in paths.items():
            click.echo(f"{label:>8}: {path}")
        for r in results:
            click.echo(f"gate {r.describe()}")
    if failed:
        click.echo("failed gates: " + ", ".join(r.gate.metric for r in failed), err=True)
        raise SystemExit(EXIT_GATE_FAILED)


class StageProgress:
    """What ``mmrag eval run`` shows while it runs: a tqdm bar per stage, as ``mmrag ingest`` draws.

    On a terminal each stage (retrieve, answer, verify, judge) gets its own bar. Off one (a log, a
    pipe, CI) a plain line every 50 items, and every item of the slow stages (answer, judge), so a
    log never fills with carriage returns.

    Args:
        stream: where to draw (stderr: stdout carries the results and --json).
    """

    SLOW = ("answer", "judge")

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.on_terminal = bool(getattr(stream, "isatty", lambda: False)())
        self._bars: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self._bars.values():
            bar.close()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.on_terminal:
            self._draw(stage, done, total)
        elif done == total or done % 50 == 0 or stage in self.SLOW:
            click.echo(f"{stage}: {done}/{total}", file=self.stream)

    def _draw(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            from tqdm import tqdm

            # disable=False: mmrag.logs sets TQDM_DISABLE for the libraries' own bars, not for this one.
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit="query", file=self.stream,
                                           dynamic_ncols=True, disable=False)
        bar.total = total
        bar.update(done - bar.n)


@eval_group.command(name="compare")
@click.argument("base", type=click.Path(path_type=Path, exists=True))
@click.argument("new", type=click.Path(path_type=Path, exists=True))
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="A metric regresses only when it worsens by more than this.")
@click.option("--fail-on-regression", is_flag=True, help="Exit 4 when a metric regressed or a query lost a relevant document.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@errors_to_click
def eval_compare(base: Path, new: Path, tolerance: float, fail_on_regression: bool, as_json: bool) -> None:
    """Show what regressed from BASE to NEW (report.json files or the folders holding them).

    Lists metric deltas and the queries whose relevant documents dropped out of the top k.
    """
    from mmrag.evaluation import compare_runs, load_report

    result = compare_runs(load_report(base), load_report(new), tolerance=tolerance)
    if as_json:
        emit(result.to_dict())
    else:
        for warning in result.warnings:
            click.echo(f"warning: {warning}")
        for name, m in result.metrics.items():
            flag = "  REGRESSED" if m["regressed"] else ""
            click.echo(f"{name:>24}: {m['base']:.4f} -> {m['new']:.4f} ({m['delta']:+.4f}){flag}")
        click.echo(f"{len(result.lost)} queries lost relevant documents")
        for qid, docs in sorted(result.lost.items()):
            click.echo(f"  {qid}: lost {', '.join(docs)}")
        if result.only_base or result.only_new:
            click.echo(f"queries only in base: {len(result.only_base)}; only in new: {len(result.only_new)}")
    if fail_on_regression and result.regressed:
        raise SystemExit(EXIT_REGRESSED)


@eval_group.command(name="hallucination")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Score at or above which an answer is hallucinated. [default: 0.5, see mmrag.answering.verification]")
@click.option("--folds", type=click.IntRange(2, 100), default=5, show_default=True,
              help="Cross-validation folds for the threshold (files with labels only).")
@click.option("--lexical", is_flag=True, help="Lexical checks only: no text model (fast, a little less accurate).")
@click.option("--reader", "use_reader", is_flag=True,
              help="Also multiply each sentence's support by the offline reader's support head (issue 25; on "
                   "RAGTruth QA it lowered CV balanced accuracy from 0.773 to 0.688, so it is off by default).")
@click.option("--profile", type=click.Choice(["default", "offline"]), envvar="MMRAG_PROFILE", default=None,
              help="Model profile: default (all-MiniLM-L6-v2, downloaded once) or offline (bundled, no network). "
                   "[env MMRAG_PROFILE]")
@click.option("--text-model", envvar="MMRAG_TEXT__MODEL", default=None,
              help="sentence-transformers model name or local folder.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with a verdict per answer).")
@errors_to_click
def eval_hallucination(file: Path, threshold: float | None, folds: int, lexical: bool, use_reader: bool,
                       as_json: bool, **opts: Any) -> None:
    """Detect hallucinated answers in FILE.jsonl, offline (no LLM).

    Each line: {"context": str or [str], "answer": str, "question"?: str, "label"?: 0|1, "id"?: str}.
    With labels, prints balanced accuracy, F1 and the confusion matrix at the threshold, and with
    the threshold chosen by k-fold cross-validation (pooled out-of-fold predictions, seed 0).
    """
    import time

    from mmrag.evaluation.hallucination import evaluate_detector, load_answers
    from mmrag.answering.verification import DEFAULT_THRESHOLD, HallucinationDetector

    answers = load_answers(file)
    embedder, model, reader = None, "none (lexical only)", None
    if not lexical:
        from mmrag.answering.extractive import load_reader
        from mmrag.registry import build_embedder, resolve_models

        models = resolve_models(settings_from(opts))
        model, embedder = models.text_model, build_embedder(models, "text")
        reader = load_reader() if use_reader else None
    detector = HallucinationDetector(embedder, threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                                     reader=reader)
    start = time.perf_counter()
    report = evaluate_detector(detector, answers, folds=folds)
    report.update(file=str(file), text_model=model, reader="offline" if reader is not None else None,
                  seconds=round(time.perf_counter() - start, 2))
    if as_json:
        emit(report)
        return
    click.echo(f"{report['answers']} answers in {file}; text model {model}; {report['seconds']:.1f} s")
    click.echo(f"flagged as hallucinated at threshold {detector.threshold:.2f}: {report['flagged']} "
               f"({report['flagged'] / report['answers']:.1%}); mean score {report['mean_score']:.3f}")
    if not report["labelled"]:
        return
    cv = report["cv"]
    click.echo(f"{report['labelled']} labelled answers, {report['positives']} hallucinated")
    click.echo(f"{'':28}{'bal. acc':>9}{'F1':>7}{'tn':>6}{'fp':>6}{'fn':>6}{'tp':>6}")
    rows = [(f"threshold {detector.threshold:.2f}", report["default"])]
    if cv:
        rows.append((f"{folds}-fold CV threshold", {**cv, **cv["confusion"]}))
    for name, m in rows:
        click.echo(f"{name:<28}{m['balanced_accuracy']:>9.3f}{m['f1']:>7.3f}"
                   f"{m['tn']:>6}{m['fp']:>6}{m['fn']:>6}{m['tp']:>6}")
    if cv:
        click.echo("CV thresholds per fold: " + ", ".join(f"{t:.3f}" for t in cv["thresholds"])
                   + "; balanced accuracy per fold: " + ", ".join(f"{b:.3f}" for b in cv["fold_balanced_accuracy"]))
    else:
        click.echo(f"no cross-validation: {report['cv_skipped']}")
