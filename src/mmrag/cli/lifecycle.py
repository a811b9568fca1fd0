"""``mmrag reindex``, ``promote``, ``rollback`` and ``versions``: versioned collections behind an alias.

A knowledge base name ``kb`` points at one live version ``kb@N`` (:mod:`mmrag.lifecycle.versions`).
With the embedded store these commands need the store to themselves; while ``mmrag serve`` runs on
it, promote and roll back through its API (``POST /v1/collections/{kb}/promote``), or run a Chroma
server and pass ``--store-url`` to every process.

Exit status: 0 success; 1 error; 4 the canary refused the promote.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, require_collection, settings_from
from mmrag.errors import CanaryRefusedError

EXIT_CANARY_REFUSED = 4


def _versions(opts: dict[str, Any]) -> Any:
    from mmrag.lifecycle.versions import Versions
    from mmrag.manifest import Manifest

    s = settings_from(opts)
    return Versions(Manifest(s.data_dir / "manifest.sqlite3"), lock_timeout=s.store.lock_timeout)


@main.command()
@click.argument("kb_name", metavar="KB")
@click.option("--chunk-size", type=click.IntRange(16), default=None,
              help="The new version's chunk size in tokens. [default: the configured one]")
@click.option("--chunk-overlap", type=click.IntRange(0), default=None, help="The new version's chunk overlap.")
@click.option("--allow-source-outside-roots", "allow_outside", is_flag=True,
              help="Read document sources outside the folders KB was ingested from (a restored snapshot's).")
@click.option("--redact", default=None, metavar="KINDS",
              help="The new version's redaction policy (as `mmrag ingest --redact`; none for none). "
                   "[default: the live version's]")
@common_options
@errors_to_click
def reindex(kb_name: str, chunk_size: int | None, chunk_overlap: int | None, allow_outside: bool, redact: str | None,
            as_json: bool, **opts: Any) -> None:
    """Build a new version of KB from its live version's sources, while KB keeps serving.

    Takes --clip-model/--text-model (and the other model options) for the new version. The new
    version is not served until `mmrag promote KB N`. A reindex that is interrupted resumes when
    rerun with the same options.
    """
    from mmrag.chunking import ChunkSpec
    from mmrag.lifecycle.reindex import reindex as run
    from mmrag.redaction import parse_policy
    from mmrag.registry import resolve_models
    from mmrag.sources import storage_options

    policy = parse_policy(redact) if redact is not None else None
    s = settings_from(opts)
    chunk = ChunkSpec(chunk_size or s.chunk.size, s.chunk.overlap if chunk_overlap is None else chunk_overlap)

    def progress(done: int, total: int) -> None:
        if not as_json and total and (done == total or done % 50 == 0):
            click.echo(f"  {done}/{total} files", err=True)

    result = run(kb_name, open_kb=lambda name, spec: open_kb(opts, name, chunk=spec), chunk=chunk,
                 models=resolve_models(s), progress=progress, allow_outside_roots=allow_outside, redact=policy,
                 storage_options=storage_options(s.source))
    if as_json:
        emit(result.to_dict())
        return
    v = result.version
    click.echo(f"built {v.label} from {result.source}{' (resumed)' if result.resumed else ''}: {result.documents} "
               f"documents, {result.indexed} indexed, {result.removed} removed; chunk {chunk.size}/{chunk.overlap}")
    if result.redact:
        click.echo(f"redaction {','.join(result.redact)}: " + ", ".join(f"{k} {n}" for k, n in result.redactions.items()))
    for path in result.missing:
        click.echo(f"MISSING {path} (no longer exists; left out)")
    for f in result.failed:
        click.echo(f"FAILED  {f['path']}: {f['reason']}")
    click.echo(f"serve it with: mmrag promote {kb_name} {v.number}")


@main.command()
@click.argument("kb_name", metavar="KB")
@click.argument("version", type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Switch even if the canary refuses (the override is logged).")
@click.option("--budget", type=click.FloatRange(0, 1), default=None,
              help="The most a canary metric may drop. [env MMRAG_LIFECYCLE__CANARY_BUDGET; default 0]")
@common_options
@errors_to_click
def promote(kb_name: str, version: int, force: bool, budget: float | None, as_json: bool, **opts: Any) -> None:
    """Make KB@VERSION the live version, if the canary passes.

    The canary runs KB's probes (`mmrag probes`), and the evaluation dataset when
    lifecycle.eval_dataset is set, on the live version and on the candidate; it refuses (exit 4)
    when a metric drops by more than the budget, and shows the difference. Running servers answer
    from the new version on their next request.
    """
    from mmrag.lifecycle.promotion import promote as run

    s = settings_from(opts)
    require_collection(s, kb_name)
    if budget is not None:
        s.lifecycle.canary_budget = budget
    opened: list[Any] = []

    def open_version(name: str) -> Any:
        # The canary searches both versions: they share one load of the models.
        opened.append(open_kb(opts, name, embedders=opened[0] if opened else None))
        return opened[-1]

    try:
        result = run(kb_name, version, versions=_versions(opts), open_kb=open_version, settings=s, force=force)
    except CanaryRefusedError as exc:
        click.echo(f"REFUSED {exc}", err=True)
        sys.exit(EXIT_CANARY_REFUSED)
    if as_json:
        emit(result.to_dict())
        return
    if result.canary is not None:
        click.echo(result.canary.render())
    note = " (FORCED past the canary; logged)" if result.forced else ""
    click.echo(f"{kb_name} -> {result.live.label}{note} (was {result.previous.label if result.previous else 'none'})")


@main.command()
@click.argument("kb_name", metavar="KB")
@common_options
@errors_to_click
def rollback(kb_name: str, as_json: bool, **opts: Any) -> None:
    """Return KB to the version that was live before the current one.

    Uploads and deletes made since that version was live are carried back into it first.
    """
    from mmrag.lifecycle.promotion import rollback as run

    require_collection(settings_from(opts), kb_name)
    previous, live = run(kb_name, versions=_versions(opts), open_kb=lambda label: open_kb(opts, label))
    if as_json:
        emit({"kb": kb_name, "from": previous, "live": live.label})
    else:
        click.echo(f"{kb_name} -> {live.label} (was {previous})")


class _ListByDefault(click.Group):
    """``mmrag versions KB`` lists; ``mmrag versions prune KB`` prunes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_ListByDefault)
def versions() -> None:
    """List a knowledge base's versions (`mmrag versions KB`), or prune old ones."""


@versions.command("list")
@click.argument("kb_name", metavar="KB")
@common_options
@errors_to_click
def list_versions(kb_name: str, as_json: bool, **opts: Any) -> None:
    """KB's versions: live marker, state, embedding identity, record counts, last figures."""
    from mmrag.kb import KnowledgeBase

    require_collection(settings_from(opts), kb_name)  # before _versions, which would create the manifest
    vs = _versions(opts)
    rows = []
    for v in vs.list(kb_name):
        data = v.to_dict()
        bare: KnowledgeBase = open_kb(opts, v.label)
        try:
            data["records"] = {"clip": bare.bare_store("clip").count(), "text": bare.bare_store("text").count(),
                               "documents": bare.manifest.counts(v.physical).get("done", 0)}
            data["identity"] = {"clip": bare.bare_store("clip").identity, "text": bare.bare_store("text").identity}
        finally:
            bare.close()
        rows.append(data)
    if as_json:
        emit({"kb": kb_name, "versions": rows, "events": vs.events(kb_name, 10)})
        return
    if not rows:
        click.echo(f"no knowledge base {kb_name!r}")
        return
    for r in rows:
        when = dt.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M") if r["created_at"] else "-"
        mark = "*" if r["live"] else " "
        ident = r["identity"]
        figures = _figures(r["figures"])
        click.echo(f"{mark} {r['label']:<20} {r['state']:<8} {when}  docs {r['records']['documents']}, "
                   f"clip {r['records']['clip']}, text {r['records']['text']}  "
                   f"clip={ident['clip'].get('model', '?')} text={ident['text'].get('model', '?')}"
                   f"{'  chunk ' + str(r['settings']['chunk_size']) if r['settings'].get('chunk_size') else ''}"
                   f"{'  ' + figures if figures else ''}")


def _figures(figures: dict[str, Any]) -> str:
    out = []
    probes = figures.get("probes") or {}
    if "recall" in probes:
        out.append(f"probe recall {probes['recall']:.3f}")
    for name, value in sorted((figures.get("eval") or {}).items()):
        if isinstance(value, (int, float)) and name != "at":
            out.append(f"{name} {value:.3f}")
    return ", ".join(out)


@versions.command("prune")
@click.argument("kb_name", metavar="KB")
@click.option("--keep", type=click.IntRange(0), default=1, show_default=True,
              help="Older versions to keep besides the live one (rollback needs one).")
@common_options
@errors_to_click
def prune_versions(kb_name: str, keep: int, as_json: bool, **opts: Any) -> None:
    """Drop KB's old versions: all but the live one and KEEP others (builds in progress stay).

    The kept ones are where a rollback goes first, then the newest. Prune waits for a promote,
    rollback or reindex of KB in another process to finish, and reads the live version after it.
    """
    from mmrag.lifecycle.promotion import prune

    require_collection(settings_from(opts), kb_name)
    dropped = prune(kb_name, versions=_versions(opts), open_bare=lambda name: open_kb(opts, name), keep=keep)
    if as_json:
        emit({"kb": kb_name, "dropped": dropped})
    else:
        click.echo(f"dropped {', '.join(dropped)}" if dropped else "nothing to prune")
