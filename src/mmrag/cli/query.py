"""Commands that read a knowledge base: search and ask."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, settings_from


def rerank_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--rerank NAME`` and ``--rerank-depth N``, shared by search, ask and eval retrieval."""
    fn = click.option("--rerank-depth", type=click.IntRange(1, 1000), default=None,
                      help="How many top hits the reranker rereads. [env MMRAG_RERANK__DEPTH; default 30]")(fn)
    return click.option(
        "--rerank", metavar="NAME", default=None,
        help="Reread the top hits with a reranker: offline, cross-encoder:<hub name or folder>, "
             "litellm:<provider>/<model>, or none. [env MMRAG_RERANK__MODEL; default none]")(fn)


def reranker_from(settings: Any, name: str | None, depth: int | None) -> tuple[Any, int]:
    """The reranker the options (or the settings) name, or None; and the depth it rereads."""
    from mmrag.registry import RerankerPool

    return RerankerPool(settings, allow_any=True).get(name), depth or settings.rerank.depth


@main.command()
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Query by an image.")
@click.option("--k", type=click.IntRange(1, 1000), default=None, help="Hits to return. [env MMRAG_RETRIEVAL__K; default 10]")
@click.option("--modality", type=click.Choice(["text", "image", "all"]), default="all", show_default=True)
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="hybrid", show_default=True,
              help="Which index to search; hybrid fuses all three by reciprocal rank.")
@click.option("--source-prefix", metavar="PATH", default=None,
              help="Only hits whose source file path starts with PATH (relative paths are made absolute).")
@click.option("--doc-type", default=None, help="Only this document type: txt, markdown (md), html, pdf, docx, pptx, image, jsonl.")
@click.option("--page", type=click.IntRange(1), default=None, help="Only hits on this page or slide (1-based).")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Only hits whose metadata KEY equals VALUE; repeatable. VALUE is a number, true/false, "
                   "or text (quote it as JSON, '\"2024\"', to match a number stored as text).")
@click.option("--dedupe", is_flag=True, help="Each document's best hit only (still --k documents when there are).")
@rerank_options
@common_options
@errors_to_click
def search(text: str | None, image: Path | None, k: int | None, modality: str, retriever: str, source_prefix: str | None,
           doc_type: str | None, page: int | None, meta: tuple[str, ...], dedupe: bool, rerank: str | None,
           rerank_depth: int | None, as_json: bool, **opts: Any) -> None:
    """Search by TEXT, by --image, or both; filters apply to every retriever before the top k."""
    from mmrag.filters import SearchFilter
    from mmrag.retrieval import Searcher
    from mmrag.types import ImageAsset, Query

    if not text and image is None:
        raise click.UsageError("give a query TEXT or --image FILE")
    s = settings_from(opts)
    filters = SearchFilter(source_prefix=_absolute_prefix(source_prefix) if source_prefix else None, doc_type=doc_type,
                           page=page, metadata=_parse_meta(meta))
    reranker, depth = reranker_from(s, rerank, rerank_depth)
    kb = open_kb(opts)
    query = Query(text=text, image=ImageAsset(path=str(image)) if image else None)
    hits = Searcher.from_settings(kb, s.retrieval, reranker=reranker, rerank_depth=depth).search(
        query, k or s.retrieval.k, modality=modality, retriever=retriever,
        filters=None if filters.is_empty else filters, dedupe=dedupe)
    if as_json:
        emit([{"id": h.id, "doc_id": h.doc_id, "source": h.source, "page": h.page, "modality": h.modality,
               "score": round(h.score, 6), "text": h.text,
               **{key: h.metadata[key] for key in ("rerank_score", "first_stage_score") if key in h.metadata}}
              for h in hits])
        return
    if not hits:
        click.echo("no hits (is the collection empty, or do the filters exclude everything?)")
    for rank, h in enumerate(hits, 1):
        page_note = f" p.{h.page}" if h.page is not None else ""
        snippet = (" | " + " ".join((h.text or "").split())[:100]) if h.text else ""
        click.echo(f"{rank:>2}. {h.score:.3f} [{h.modality}] {h.doc_id}{page_note}{snippet}")


def _absolute_prefix(prefix: str) -> str:
    """Sources are stored as absolute paths; keep a trailing slash, which means "inside this folder"."""
    if "://" in prefix:  # an object URL (s3://bucket/docs/) is a source as it stands
        return prefix
    absolute = os.path.abspath(prefix)
    return absolute + "/" if prefix.endswith(("/", os.sep)) and not absolute.endswith("/") else absolute


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--meta")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if not isinstance(value, (str, int, float, bool)):
            value = raw  # null, lists and objects are not metadata values: match the text as written
        out[key.strip()] = value
    return out


@main.command()
@click.argument("question")
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Ask about an image too.")
@click.option("--model", envvar="MMRAG_LLM__MODEL", default=None,
              help="Any LiteLLM model (openai/..., ollama_chat/...); default the offline mmrag-local/smollm2-135m.")
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True, help="Context blocks to retrieve.")
@click.option("--stream", is_flag=True, help="Print the answer as it is generated.")
@click.option("--verify", is_flag=True,
              help="Check each sentence against the context with the offline hallucination detector.")
@click.option("--drop-unsupported", is_flag=True,
              help="With --verify: drop unsupported sentences instead of marking them [unsupported].")
@click.option("--answer-mode", type=click.Choice(["generate", "extractive", "auto"]), default=None,
              help="generate (the chat model), extractive (the best context sentence, no LLM) or auto (generate, "
                   "extractive when that fails verification). Default: extractive for the offline model, else generate.")
@rerank_options
@common_options
@errors_to_click
def ask(question: str, image: Path | None, model: str | None, k: int, stream: bool, verify: bool,
        drop_unsupported: bool, answer_mode: str | None, rerank: str | None, rerank_depth: int | None,
        as_json: bool, **opts: Any) -> None:
    """Answer QUESTION from the knowledge base, citing the documents it stands on.

    When the context does not hold the answer, it says so (and why). With --verify, sentences the
    retrieved context does not support are marked (or dropped).
    """
    import dataclasses

    from mmrag.answering import Answerer
    from mmrag.registry import answer_mode as resolve_mode
    from mmrag.registry import answer_options, answer_stop, build_chat_model
    from mmrag.retrieval import Searcher
    from mmrag.types import ImageAsset

    s = settings_from(opts)
    mode = resolve_mode(s, model, answer_mode)
    chat = build_chat_model(s, model) if mode != "extractive" else None
    reranker, depth = reranker_from(s, rerank, rerank_depth)
    kb = open_kb(opts)
    verifier = None
    if verify or drop_unsupported:
        from mmrag.answering.verification import HallucinationDetector

        verifier = HallucinationDetector(kb.text)
    searcher = Searcher.from_settings(kb, s.retrieval, reranker=reranker, rerank_depth=depth)
    answerer = Answerer(chat, searcher, k=k, retriever="hybrid",
                        stop=answer_stop(chat.name) if chat else None, verifier=verifier,
                        verify_mode="drop" if drop_unsupported else "mark", **answer_options(s, kb.text, mode))
    query_image = ImageAsset(path=str(image)) if image else None
    if stream and not as_json:
        deltas, holder = answerer.stream(question, image=query_image)
        for delta in deltas:
            click.echo(delta, nl=False)
        click.echo()
        answer = holder.answer
        if answer is not None and answer.abstained:
            click.echo(f"(grounding check: {answer.guard}) {answer.text}")
        elif answer is not None and answer.guard.startswith("extractive_fallback"):
            click.echo(f"(generated answer failed verification; extractive answer) {answer.text}")
        elif answer is not None and answer.verification and answer.verification["unsupported"]:
            click.echo(f"(verification: {len(answer.verification['unsupported'])} unsupported sentence(s)) {answer.text}")
    else:
        answer = answerer.answer(question, image=query_image)
    if answer is None:
        return
    if as_json:
        data = dataclasses.asdict(answer)
        data.pop("blocks", None)
        emit(data)
        return
    if not stream:
        click.echo(answer.text)
    if answer.abstained and answer.abstention:
        gate = answer.abstention
        signals = ", ".join(f"{k} {v:.2f}" for k, v in gate["features"].items())
        click.echo(f"  (why: the chance that the context holds the answer is {gate['p_answerable']:.2f}, "
                   f"below {gate['threshold']:.2f}; {signals})")
    for c in answer.citations:
        page = f" p.{c.page}" if c.page is not None else ""
        click.echo(f"  [{c.n}] {c.doc_id}{page} ({c.modality}) {c.source}")
