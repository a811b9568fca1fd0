"""The ``mmrag`` command line. The only place where :class:`MmragError` becomes a ClickException.

Exit status: 0 success; 1 error; 2 usage error; 3 ingest finished but some files failed
(each is listed with its reason).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from mmrag.config import Settings
from mmrag.errors import MmragError
from mmrag.logs import configure_logging

EXIT_PARTIAL = 3


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command takes; each also reads its MMRAG_* environment variable."""
    options = [
        click.option("--data-dir", type=click.Path(path_type=Path), envvar="MMRAG_DATA_DIR", default=None,
                     help="Where all state lives (store, manifest, keyword index). [env MMRAG_DATA_DIR; default ./.mmrag]"),
        click.option("--profile", type=click.Choice(["default", "offline"]), envvar="MMRAG_PROFILE", default=None,
                     help="Model profile: default (ViT-B-32 laion2b + all-MiniLM-L6-v2, downloaded once) or offline "
                          "(bundled models, no network). [env MMRAG_PROFILE]"),
        click.option("--collection", envvar="MMRAG_COLLECTION", default=None, help="Knowledge base name. [default: default]"),
        click.option("--clip-model", envvar="MMRAG_CLIP__MODEL", default=None, help="Any open_clip architecture, e.g. ViT-B-16."),
        click.option("--clip-pretrained", envvar="MMRAG_CLIP__PRETRAINED", default=None,
                     help="open_clip pretrained tag or a local checkpoint path."),
        click.option("--text-model", envvar="MMRAG_TEXT__MODEL", default=None,
                     help="sentence-transformers model name or local folder."),
        click.option("--store-url", envvar="MMRAG_STORE__URL", default=None,
                     help="Chroma server URL (http://host:port) instead of the embedded store."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(opts: dict[str, Any]) -> Settings:
    """Build settings: environment first, then explicit options."""
    s = Settings()
    if opts.get("data_dir"):
        s.data_dir = opts["data_dir"]
    if opts.get("profile"):
        s.profile = opts["profile"]
    if opts.get("collection"):
        s.collection = opts["collection"]
    if opts.get("clip_model"):
        s.clip.model = opts["clip_model"]
    if opts.get("clip_pretrained"):
        s.clip.pretrained = opts["clip_pretrained"]
    if opts.get("text_model"):
        s.text.model = opts["text_model"]
    if opts.get("store_url"):
        s.store.url = opts["store_url"]
    if s.profile == "offline":
        # Belt and braces: the offline profile must never reach a hub, even by a library default.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return s


def _kb(opts: dict[str, Any]) -> Any:
    from mmrag.chunking import ChunkSpec
    from mmrag.kb import KnowledgeBase
    from mmrag.registry import resolve_models

    s = _settings(opts)
    return KnowledgeBase(s.data_dir, s.collection, resolve_models(s), store_url=s.store.url,
                         chunk=ChunkSpec(s.chunk.size, s.chunk.overlap))


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MmragError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmrag")
def main() -> None:
    """mmrag: multimodal retrieval-augmented generation over documents and images."""
    configure_logging()


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prune", is_flag=True, help="Remove documents whose source file (or JSONL record) is gone.")
@click.option("--jsonl-id", default="_id", show_default=True, help="JSONL field holding the document id.")
@click.option("--jsonl-title", default="title", show_default=True, help="JSONL field holding the title.")
@click.option("--jsonl-text", default="text", show_default=True, help="JSONL field holding the text.")
@click.option("--max-file-mb", type=int, default=200, show_default=True, help="Refuse files larger than this.")
@_common
@_errors
def ingest(paths: tuple[Path, ...], prune: bool, jsonl_id: str, jsonl_title: str, jsonl_text: str,
           max_file_mb: int, as_json: bool, **opts: Any) -> None:
    """Index files and folders (text, Markdown, HTML, PDF, DOCX, PPTX, images, JSONL corpora).

    Unchanged files are skipped; an interrupted run resumes. Exits 3 if any file failed.
    """
    from mmrag.indexing import Indexer
    from mmrag.loaders import JsonlFields, LoaderLimits

    kb = _kb(opts)
    if not as_json:
        click.echo(f"mmrag: {kb.models.describe()}", err=True)
    indexer = Indexer(kb, jsonl=JsonlFields(jsonl_id, jsonl_title, jsonl_text),
                      limits=LoaderLimits(max_file_bytes=max_file_mb * 1024 * 1024))
    bar = None
    if not as_json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="file", file=sys.stderr, disable=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    summary = indexer.ingest(list(paths), prune=prune, progress=progress)
    if bar is not None:
        bar.close()
    if as_json:
        _emit(summary.to_dict())
    else:
        click.echo(f"files seen {summary.files_seen}; indexed {summary.indexed}; unchanged {summary.unchanged}; "
                   f"pruned {summary.pruned}; failed {len(summary.failed)}; skipped {len(summary.skipped)}; "
                   f"embeddings computed: clip {summary.clip_embeddings}, text {summary.text_embeddings} "
                   f"({summary.seconds:.1f}s)")
        if summary.repaired:
            click.echo(f"redid {summary.repaired} document(s) left incomplete by an earlier run")
        for p in summary.failed:
            click.echo(f"FAILED  {p.path}: {p.reason}")
        for p in summary.skipped:
            click.echo(f"skipped {p.path}: {p.reason}")
        for w in summary.warnings:
            click.echo(f"warning {w}")
    if summary.failed:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Query by an image.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--modality", type=click.Choice(["text", "image", "all"]), default="all", show_default=True)
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="clip", show_default=True,
              help="Which index to search; hybrid fuses all three by reciprocal rank.")
@_common
@_errors
def search(text: str | None, image: Path | None, k: int, modality: str, retriever: str, as_json: bool, **opts: Any) -> None:
    """Search by TEXT, by --image, or both."""
    from mmrag.retrieval import Searcher
    from mmrag.types import ImageAsset, Query

    if not text and image is None:
        raise click.UsageError("give a query TEXT or --image FILE")
    kb = _kb(opts)
    query = Query(text=text, image=ImageAsset(path=str(image)) if image else None)
    hits = Searcher(kb).search(query, k, modality=modality, retriever=retriever)
    if as_json:
        _emit([{"id": h.id, "doc_id": h.doc_id, "source": h.source, "page": h.page, "modality": h.modality,
                "score": round(h.score, 6), "text": h.text} for h in hits])
        return
    if not hits:
        click.echo("no hits (is the collection empty? run `mmrag ingest` first)")
    for rank, h in enumerate(hits, 1):
        page = f" p.{h.page}" if h.page is not None else ""
        snippet = (" | " + " ".join((h.text or "").split())[:100]) if h.text else ""
        click.echo(f"{rank:>2}. {h.score:.3f} [{h.modality}] {h.doc_id}{page}{snippet}")


@main.command()
@_common
@_errors
def status(as_json: bool, **opts: Any) -> None:
    """Show what a collection holds (documents by state, records per index)."""
    kb = _kb(opts)
    col = kb.collection
    counts = kb.manifest.counts(col)
    data = {
        "collection": col, "data_dir": str(kb.data_dir), "documents": counts,
        "records": {"clip": kb.raw_store("clip").count(), "text": kb.raw_store("text").count()},
        "keyword_index": (len(idx) if (idx := kb.keyword()) is not None else None),
        "identity": {"clip": kb.raw_store("clip").identity, "text": kb.raw_store("text").identity},
        "failed": [{"doc_id": s.doc_id, "reason": s.reason} for s in kb.manifest.all(col, "failed")],
    }
    if as_json:
        _emit(data)
        return
    click.echo(f"collection {col} in {kb.data_dir}")
    click.echo("documents: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    click.echo(f"records: clip {data['records']['clip']}, text {data['records']['text']}, bm25 {data['keyword_index']}")
    for f in data["failed"]:
        click.echo(f"FAILED  {f['doc_id']}: {f['reason']}")


@main.command()
@click.argument("doc_ids", nargs=-1, required=True)
@_common
@_errors
def delete(doc_ids: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    """Delete documents (by doc id) from every index."""
    from mmrag.errors import NotFoundError
    from mmrag.indexing import Indexer

    kb = _kb(opts)
    missing = [d for d in doc_ids if kb.manifest.get(kb.collection, d) is None]
    if missing:
        raise NotFoundError(f"Unknown doc id(s): {', '.join(missing)}. `mmrag status` lists the collection")
    n = Indexer(kb).delete(list(doc_ids))
    _emit({"deleted": n}) if as_json else click.echo(f"deleted {n} document(s)")


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_common
@_errors
def reset(yes: bool, as_json: bool, **opts: Any) -> None:
    """Delete a whole collection (all three indexes and its manifest)."""
    kb = _kb(opts)
    if not yes:
        click.confirm(f"Delete collection {kb.collection!r} in {kb.data_dir}?", abort=True)
    kb.drop()
    _emit({"reset": kb.collection}) if as_json else click.echo(f"collection {kb.collection} deleted")


@main.command()
@click.argument("question")
@click.option("--image", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Ask about an image too.")
@click.option("--model", envvar="MMRAG_LLM__MODEL", default=None,
              help="Any LiteLLM model (openai/..., ollama_chat/...); default the offline mmrag-local/smollm2-135m.")
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True, help="Context blocks to retrieve.")
@click.option("--stream", is_flag=True, help="Print the answer as it is generated.")
@_common
@_errors
def ask(question: str, image: Path | None, model: str | None, k: int, stream: bool, as_json: bool, **opts: Any) -> None:
    """Answer QUESTION from the knowledge base, citing the documents it stands on."""
    import dataclasses

    from mmrag.answering import Answerer
    from mmrag.llms.litellm import LiteLLMChatModel
    from mmrag.retrieval import Searcher
    from mmrag.types import ImageAsset

    s = _settings(opts)
    name = model or s.llm.model
    chat = LiteLLMChatModel(name, timeout=s.llm.timeout, num_retries=s.llm.num_retries, fallbacks=tuple(s.llm.fallbacks))
    # The 135M offline model answers on its first line and rambles after it.
    answerer = Answerer(chat, Searcher(_kb(opts)), k=k, retriever="hybrid",
                        stop=["\n"] if name.startswith("mmrag-local/") else None)
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
        _emit(data)
        return
    if not stream:
        click.echo(answer.text)
    for c in answer.citations:
        page = f" p.{c.page}" if c.page is not None else ""
        click.echo(f"  [{c.n}] {c.doc_id}{page} ({c.modality}) {c.source}")


@main.group(name="eval")
def eval_group() -> None:
    """Evaluate retrieval."""


@eval_group.command(name="retrieval")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="clip", show_default=True)
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@_common
@_errors
def eval_retrieval(dataset: Path, retriever: str, k: int, as_json: bool, **opts: Any) -> None:
    """Score document-level retrieval (precision@k, recall@k, MRR, nDCG@10) on DATASET.jsonl.

    Ingests nothing: the collection must already hold the corpus.
    """
    from mmrag.evaluation import evaluate_retrieval, load_dataset
    from mmrag.retrieval import Searcher

    kb = _kb(opts)
    report = evaluate_retrieval(Searcher(kb), load_dataset(dataset), retriever=retriever, k=k)
    if as_json:
        _emit(report.to_dict())
        return
    click.echo(f"{len(report.per_query)} queries, retriever {retriever}, collection {kb.collection}")
    for name, value in report.metrics.items():
        click.echo(f"{name:>14}: {value:.4f}")
