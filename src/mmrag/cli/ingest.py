"""Commands that change or inspect a knowledge base: ingest, status, delete, reset."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import EXIT_PARTIAL, common_options, emit, errors_to_click, main, open_kb, settings_from


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prune", is_flag=True, help="Remove documents whose source file (or JSONL record) is gone.")
@click.option("--jsonl-id", default="_id", show_default=True, help="JSONL field holding the document id.")
@click.option("--jsonl-title", default="title", show_default=True, help="JSONL field holding the title.")
@click.option("--jsonl-text", default="text", show_default=True, help="JSONL field holding the text.")
@click.option("--max-file-mb", type=int, default=200, show_default=True, help="Refuse files larger than this.")
@click.option("--ocr", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Read text from pixels: auto = pages without a text layer and images the detector finds text in.")
@click.option("--page-images", is_flag=True,
              help="Also index PDF pages that have a text layer as page images (scanned pages always are).")
@click.option("--engine", "engine_name", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: load and embed on Ray Data (pip install 'mmrag[ray]'); "
                   "this process still does every write.")
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster to join (ray://host:10001 or host:6379). [env RAY_ADDRESS; default: start a local "
                   "Ray on this machine's cores]")
@click.option("--embed-workers", type=click.IntRange(1), default=None,
              help="Ray embedding actors, each loading the models once. [default: 1 per GPU under cuda, else 1]")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="Where the models run: auto = cuda when torch sees a GPU. On a GPU they run in fp16 (checked against fp32).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=None,
              help="Items per embedding batch. [default: 32 images / 64 chunks on CPU, 256 on a GPU]")
@click.option("--progress-every", type=click.FloatRange(0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="When stderr is not a terminal: print a progress line this often (a terminal gets a bar).")
@click.option("--access", "access_labels", multiple=True, metavar="LABEL",
              help="Access label for every document of this run (group:NAME or user:NAME; repeatable). A "
                   ".mmrag-access file in a folder and a JSONL 'access' field add labels too; see `mmrag access`.")
@common_options
@errors_to_click
def ingest(paths: tuple[Path, ...], prune: bool, jsonl_id: str, jsonl_title: str, jsonl_text: str,
           max_file_mb: int, ocr: str, page_images: bool, engine_name: str, ray_address: str | None,
           embed_workers: int | None, device: str, batch_size: int | None, progress_every: float, as_json: bool,
           access_labels: tuple[str, ...] = (), **opts: Any) -> None:
    """Index files and folders (text, Markdown, HTML, PDF, DOCX, PPTX, images, JSONL corpora).

    Unchanged files are skipped; an interrupted run resumes. Exits 3 if any file failed. --json
    gives each file's outcome (indexed, unchanged, failed or skipped, with the reason).
    """
    from mmrag.cli.progress import FileWatch, Progress, file_outcomes
    from mmrag.indexing import Indexer, LocalEngine, ingest_limits
    from mmrag.lifecycle.promotion import ingest_on_live_version
    from mmrag.lifecycle.versions import Versions
    from mmrag.loaders import JsonlFields, discover
    from mmrag.security.rules import AccessRules

    rules = AccessRules(labels=access_labels, roots=list(paths))  # a bad label fails before any work
    kb = open_kb({**opts, "device": device, "batch_size": batch_size}, create=True)
    engine: Any = LocalEngine()
    if engine_name == "ray":
        from mmrag.rayingest import RayEngine, RayOptions, import_ray

        import_ray()  # before any work: say how to install it
        engine = RayEngine(kb.models, RayOptions(address=ray_address, embed_workers=embed_workers, device=device,
                                                 batch_size=batch_size))
    elif ray_address or embed_workers:
        raise click.UsageError("--ray-address and --embed-workers need --engine ray")
    if not as_json:
        click.echo(f"mmrag: {kb.models.describe()}; engine {engine.name}", err=True)
    # Walked once here, so the progress can name files and the summary can give each one's outcome.
    found = list(discover(list(paths)))
    watch = FileWatch(engine, found)
    # The per-document budgets come from the settings (MMRAG_INGEST__MAX_PAGES, ...); the flags win.
    limits = ingest_limits(settings_from(opts), max_file_bytes=max_file_mb * 1024 * 1024, ocr=ocr,
                           page_images=page_images)
    name = settings_from(opts).collection
    with Progress(watch, sys.stderr, every=progress_every, bar=not as_json) as progress:
        # Each time the run takes the writer lock it checks that ``name`` still names the version it
        # writes: a promote or rollback in another process meanwhile restarts it on the new live one.
        summary = ingest_on_live_version(
            name, kb, lambda live, guard: Indexer(
                live, jsonl=JsonlFields(jsonl_id, jsonl_title, jsonl_text), engine=watch, limits=limits, guard=guard,
                access=rules,
            ).ingest(list(paths), prune=prune, progress=progress, files=found),
            resolve=lambda n: Versions(kb.manifest).resolve(n),
            open_kb=lambda n: open_kb(opts, n, create=True, embedders=kb))
    if as_json:
        emit({**summary.to_dict(), "files": file_outcomes(watch, summary)})
    else:
        click.echo(f"files seen {summary.files_seen}; indexed {summary.indexed}; unchanged {summary.unchanged}; "
                   f"pruned {summary.pruned}; failed {len(summary.failed)}; skipped {len(summary.skipped)}; "
                   f"embeddings computed: clip {summary.clip_embeddings}, text {summary.text_embeddings} "
                   f"({summary.seconds:.1f}s)")
        if summary.engine != "local" and summary.workers:
            w = summary.workers
            click.echo(f"engine {summary.engine}: {w.get('embed', 0):g} embedding worker(s) on {w.get('cpus', 0):g} CPU(s), "
                       f"{w.get('gpus', 0):g} GPU(s); start-up {summary.startup_seconds:.1f}s")
        if summary.retries:
            click.echo(f"retried {summary.retries} store request(s) after transient errors")
        if summary.stats:
            click.echo("loaders: " + ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in sorted(summary.stats.items())))
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
@common_options
@errors_to_click
def status(as_json: bool, **opts: Any) -> None:
    """Show what a collection holds (documents by state, records per index).

    Exits with status 3 when the stores disagree with the manifest (each problem is printed with
    the command that repairs it), so a health check can call it.
    """
    kb = open_kb(opts)
    col = kb.collection
    counts = kb.manifest.counts(col)
    health = kb.health()
    data = {
        "collection": col, "data_dir": str(kb.data_dir), "documents": counts,
        "records": {"clip": health.have[0], "text": health.have[1]},
        "keyword_index": health.have[2],
        "expected": {"clip": health.want[0], "text": health.want[1], "keyword_index": health.want[1]},
        "problems": health.problems,
        "identity": {"clip": kb.raw_store("clip").identity, "text": kb.raw_store("text").identity},
        "failed": [{"doc_id": s.doc_id, "reason": s.reason} for s in kb.manifest.all(col, "failed")],
    }
    if as_json:
        emit(data)
    else:
        _print_status(kb, data, health.problems)
    if health.problems:
        sys.exit(EXIT_PARTIAL)


def _print_status(kb: Any, data: dict[str, Any], problems: list[str]) -> None:
    counts = data["documents"]
    click.echo(f"collection {data['collection']} in {kb.data_dir}")
    click.echo("documents: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    click.echo(f"records: clip {data['records']['clip']}, text {data['records']['text']}, bm25 {data['keyword_index']}")
    for problem in problems:
        click.echo(f"PROBLEM {problem}")
    for f in data["failed"]:
        click.echo(f"FAILED  {f['doc_id']}: {f['reason']}")


@main.command()
@click.argument("doc_ids", nargs=-1, required=True)
@common_options
@errors_to_click
def delete(doc_ids: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    """Delete documents (by doc id) from every index."""
    from mmrag.errors import NotFoundError
    from mmrag.indexing import Indexer

    kb = open_kb(opts)
    missing = [d for d in doc_ids if kb.manifest.get(kb.collection, d) is None]
    if missing:
        raise NotFoundError(f"Unknown doc id(s): {', '.join(missing)}. `mmrag status` lists the collection")
    n = Indexer(kb).delete(list(doc_ids))
    emit({"deleted": n}) if as_json else click.echo(f"deleted {n} document(s)")


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
@errors_to_click
def reset(yes: bool, as_json: bool, **opts: Any) -> None:
    """Delete a whole collection (all three indexes and its manifest), every version of it."""
    from mmrag.errors import InvalidInputError
    from mmrag.lifecycle.reindex import drop_knowledge_base
    from mmrag.lifecycle.versions import split_label

    name = settings_from(opts).collection
    if split_label(name)[1] is not None:
        raise InvalidInputError(f"reset deletes a whole knowledge base; to drop old versions of "
                                f"{split_label(name)[0]!r} run `mmrag versions prune {split_label(name)[0]}`")
    kb = open_kb(opts)
    if not yes:
        click.confirm(f"Delete collection {name!r} in {kb.data_dir}?", abort=True)
    dropped = drop_knowledge_base(kb, name, lambda physical: open_kb(opts, physical))
    emit({"reset": name, "versions": dropped}) if as_json else click.echo(f"collection {name} deleted")
