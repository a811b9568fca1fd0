"""Commands that change or inspect a knowledge base: ingest, status, delete, reset."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import (
    EXIT_PARTIAL,
    UsageFailure,
    common_options,
    emit,
    errors_to_click,
    main,
    open_kb,
    settings_from,
)
from mmrag.redaction import STAT_PREFIX


@main.command()
@click.argument("paths", nargs=-1, required=True)
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
@click.option("--load-workers", type=click.IntRange(0, 64), default=None,
              help="local engine: processes that load PDFs, Office files and images (parsing, OCR) while this one "
                   "embeds; 0 loads everything here. [default: one per core when a run has two such files or more]")
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster to join (ray://host:10001 or host:6379). [env RAY_ADDRESS; default: start a local "
                   "Ray on this machine's cores]")
@click.option("--embed-workers", type=click.IntRange(1), default=None,
              help="Ray embedding actors, each loading the models once. [default: 1 per GPU under cuda, else 1]")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="Where the models run: auto = cuda when torch sees a GPU. On a GPU they run in fp16 (checked against fp32).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=None,
              help="Items per embedding batch. [default: 32 images / 64 chunks on CPU, 256 on a GPU]")
@click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
              help="For s3:// (gs://, https://) sources: an fsspec storage option, e.g. endpoint_url=http://127.0.0.1:9000 "
                   "(repeatable). [env MMRAG_SOURCE__ENDPOINT_URL, MMRAG_SOURCE__REGION...; credentials: the usual AWS_* "
                   "variables or ~/.aws]")
@click.option("--progress-every", type=click.FloatRange(0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="When stderr is not a terminal: print a progress line this often (a terminal gets a bar).")
@click.option("--redact", default=None, metavar="KINDS",
              help="Replace these values with placeholders before anything is chunked or embedded: comma-separated "
                   "kinds of email, phone, iban, card (Luhn-checked), ip; or none. A new collection records it; "
                   "another policy needs `mmrag reindex --redact`. [default: the collection's own]")
@click.option("--access", "access_labels", multiple=True, metavar="LABEL",
              help="Access label for every document of this run (group:NAME or user:NAME; repeatable). A "
                   ".mmrag-access file in a folder and a JSONL 'access' field add labels too; see `mmrag access`.")
@common_options
@errors_to_click
def ingest(paths: tuple[str, ...], prune: bool, jsonl_id: str, jsonl_title: str, jsonl_text: str,
           max_file_mb: int, ocr: str, page_images: bool, engine_name: str, load_workers: int | None,
           ray_address: str | None, embed_workers: int | None, device: str, batch_size: int | None,
           storage_option: tuple[str, ...],
           progress_every: float, redact: str | None, as_json: bool, access_labels: tuple[str, ...] = (),
           **opts: Any) -> None:
    """Index files and folders (text, Markdown, HTML, PDF, DOCX, PPTX, images, JSONL corpora).

    PATHS may also be object URLs: s3://bucket/prefix (gs://, https:// through fsspec). Their doc
    ids are keys relative to the prefix; an unchanged object (same size and ETag) is not read again.

    Unchanged files are skipped; an interrupted run resumes. Exits 3 if any file failed. --json
    gives each file's outcome (indexed, unchanged, failed or skipped, with the reason).
    """
    from mmrag.cli.progress import FileWatch, Progress, file_outcomes
    from mmrag.indexing import Indexer, LocalEngine, ingest_limits
    from mmrag.lifecycle.promotion import ingest_on_live_version
    from mmrag.lifecycle.versions import Versions
    from mmrag.loaders import JsonlFields
    from mmrag.redaction import parse_policy
    from mmrag.security.rules import AccessRules
    from mmrag.sources import SourceNotFoundError, discover_sources, is_url, storage_options

    policy = parse_policy(redact) if redact is not None else None  # a typo fails before the models load
    if engine_name == "ray" and load_workers is not None:
        raise click.UsageError("--load-workers is the local engine's; Ray schedules its own load tasks")
    settings = settings_from(opts)
    extra = dict(_option(o) for o in storage_option)
    sources: list[str | Path] = [p if is_url(p) else Path(p) for p in paths]
    # .mmrag-access files are read in local folders only (an object store has no such file).
    rules = AccessRules(labels=access_labels, roots=[p for p in sources if isinstance(p, Path)])  # a bad label fails before any work
    # Walked (and listed) once, before the models load, so a missing bucket fails fast and creates
    # nothing; the progress names files from it and the summary gives each one's outcome.
    max_object = min(max_file_mb, settings.source.max_object_mb) * 1024 * 1024
    try:
        found = list(discover_sources(sources, storage_options(settings.source, extra), max_object_bytes=max_object))
    except SourceNotFoundError as exc:  # the argument names nothing: a usage error, as an unknown collection is
        raise UsageFailure(str(exc)) from exc
    kb = open_kb({**opts, "device": device, "batch_size": batch_size}, create=True)
    engine: Any = LocalEngine(load_workers)
    if engine_name == "ray":
        from mmrag.indexing.ray import RayEngine, RayOptions, import_ray

        import_ray()  # before any work: say how to install it
        engine = RayEngine(kb.models, RayOptions(address=ray_address, embed_workers=embed_workers, device=device,
                                                 batch_size=batch_size))
    elif ray_address or embed_workers:
        raise click.UsageError("--ray-address and --embed-workers need --engine ray")
    if not as_json:
        click.echo(f"mmrag: {kb.models.describe()}; engine {engine.name}", err=True)
    watch = FileWatch(engine, found)
    # The per-document budgets come from the settings (MMRAG_INGEST__MAX_PAGES, ...); the flags win.
    limits = ingest_limits(settings, max_file_bytes=max_file_mb * 1024 * 1024, ocr=ocr,
                           page_images=page_images)
    name = settings.collection
    with Progress(watch, sys.stderr, every=progress_every, bar=not as_json) as progress:
        # Each time the run takes the writer lock it checks that ``name`` still names the version it
        # writes: a promote or rollback in another process meanwhile restarts it on the new live one.
        summary = ingest_on_live_version(
            name, kb, lambda live, guard: Indexer(
                live, jsonl=JsonlFields(jsonl_id, jsonl_title, jsonl_text), engine=watch, limits=limits, guard=guard,
                redact=policy, access=rules,
            ).ingest(sources, prune=prune, progress=progress, files=found),
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
        if summary.redact:
            click.echo("redacted: " + ", ".join(f"{k} {n}" for k, n in summary.redactions.items()))
        loaders = {k: v for k, v in summary.stats.items() if not k.startswith(STAT_PREFIX)}
        if loaders:
            click.echo("loaders: " + ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in sorted(loaders.items())))
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


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000)",
                                 param_hint="--storage-option")
    return key.strip(), value


@main.command()
@common_options
@errors_to_click
def status(as_json: bool, **opts: Any) -> None:
    """Show what a collection holds (documents by state, records per index).

    Exits with status 3 when the stores disagree with the manifest (each problem is printed with
    the command that repairs it), so a health check can call it.
    """
    from mmrag.redaction import policy_text, stored_policy

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
        "identity": {"clip": kb.bare_store("clip").identity, "text": kb.bare_store("text").identity},
        "failed": [{"doc_id": s.doc_id, "reason": s.reason} for s in kb.manifest.all(col, "failed")],
        "redact": policy_text(stored_policy(kb.manifest, col) or ()),
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
    click.echo(f"redaction: {data['redact']}")
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
