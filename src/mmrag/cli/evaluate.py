"""The ``mmrag eval`` group: retrieval metrics (and, with the eval extra, the full suite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb


@main.group(name="eval")
def eval_group() -> None:
    """Evaluate retrieval."""


@eval_group.command(name="retrieval")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="clip", show_default=True)
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@common_options
@errors_to_click
def eval_retrieval(dataset: Path, retriever: str, k: int, as_json: bool, **opts: Any) -> None:
    """Score document-level retrieval (precision@k, recall@k, MRR, nDCG@10) on DATASET.jsonl.

    Ingests nothing: the collection must already hold the corpus.
    """
    from mmrag.evaluation import evaluate_retrieval, load_dataset
    from mmrag.retrieval import Searcher

    kb = open_kb(opts)
    report = evaluate_retrieval(Searcher(kb), load_dataset(dataset), retriever=retriever, k=k)
    if as_json:
        emit(report.to_dict())
        return
    click.echo(f"{len(report.per_query)} queries, retriever {retriever}, collection {kb.collection}")
    for name, value in report.metrics.items():
        click.echo(f"{name:>14}: {value:.4f}")
