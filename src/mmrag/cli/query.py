"""Commands that read a knowledge base: search and ask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, settings_from


@main.command()
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Query by an image.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--modality", type=click.Choice(["text", "image", "all"]), default="all", show_default=True)
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="clip", show_default=True,
              help="Which index to search; hybrid fuses all three by reciprocal rank.")
@common_options
@errors_to_click
def search(text: str | None, image: Path | None, k: int, modality: str, retriever: str, as_json: bool, **opts: Any) -> None:
    """Search by TEXT, by --image, or both."""
    from mmrag.retrieval import Searcher
    from mmrag.types import ImageAsset, Query

    if not text and image is None:
        raise click.UsageError("give a query TEXT or --image FILE")
    kb = open_kb(opts)
    query = Query(text=text, image=ImageAsset(path=str(image)) if image else None)
    hits = Searcher(kb).search(query, k, modality=modality, retriever=retriever)
    if as_json:
        emit([{"id": h.id, "doc_id": h.doc_id, "source": h.source, "page": h.page, "modality": h.modality,
                "score": round(h.score, 6), "text": h.text} for h in hits])
        return
    if not hits:
        click.echo("no hits (is the collection empty? run `mmrag ingest` first)")
    for rank, h in enumerate(hits, 1):
        page = f" p.{h.page}" if h.page is not None else ""
        snippet = (" | " + " ".join((h.text or "").split())[:100]) if h.text else ""
        click.echo(f"{rank:>2}. {h.score:.3f} [{h.modality}] {h.doc_id}{page}{snippet}")


@main.command()
@click.argument("question")
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Ask about an image too.")
@click.option("--model", envvar="MMRAG_LLM__MODEL", default=None,
              help="Any LiteLLM model (openai/..., ollama_chat/...); default the offline mmrag-local/smollm2-135m.")
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True, help="Context blocks to retrieve.")
@click.option("--stream", is_flag=True, help="Print the answer as it is generated.")
@common_options
@errors_to_click
def ask(question: str, image: Path | None, model: str | None, k: int, stream: bool, as_json: bool, **opts: Any) -> None:
    """Answer QUESTION from the knowledge base, citing the documents it stands on."""
    import dataclasses

    from mmrag.answering import Answerer
    from mmrag.registry import answer_stop, build_chat_model
    from mmrag.retrieval import Searcher
    from mmrag.types import ImageAsset

    s = settings_from(opts)
    chat = build_chat_model(s, model)
    answerer = Answerer(chat, Searcher(open_kb(opts)), k=k, retriever="hybrid", stop=answer_stop(chat.name))
    query_image = ImageAsset(path=str(image)) if image else None
    if stream and not as_json:
        deltas, holder = answerer.stream(question, image=query_image)
        for delta in deltas:
            click.echo(delta, nl=False)
        click.echo()
        answer = holder.answer
        if answer is not None and answer.abstained:
            click.echo(f"(grounding check: {answer.guard}) {answer.text}")
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
    for c in answer.citations:
        page = f" p.{c.page}" if c.page is not None else ""
        click.echo(f"  [{c.n}] {c.doc_id}{page} ({c.modality}) {c.source}")
