"""``mmrag doctor``: check a knowledge base's manifest, Chroma and keyword index against each other.

Exit status: 0 healthy; 1 error; 4 problems remain (each printed with its fix).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, settings_from

#: Exit status of `mmrag doctor` when problems remain (after --repair: the ones it could not fix).
EXIT_PROBLEMS = 4


@main.command()
@click.argument("kb_name", metavar="[KB]", required=False)
@click.option("--repair", "fix", is_flag=True,
              help="Fix what the manifest and the sources can: re-ingest documents whose records are missing, "
                   "delete orphan records, rewrite stale keyword rows. Then check again.")
@click.option("--allow-source-outside-roots", "allow_outside", is_flag=True,
              help="With --repair: also re-ingest documents whose source lies outside the folders KB was ingested "
                   "from (a restored snapshot's rows can name any file).")
@click.option("--examples", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="Example ids listed per problem (the counts are always complete).")
@common_options
@errors_to_click
def doctor(kb_name: str | None, fix: bool, allow_outside: bool, examples: int, as_json: bool, **opts: Any) -> None:
    """Check KB's manifest, Chroma collections and keyword index against each other.

    Compares counts, record ids per document, keyword rows, the embedding identity, pending
    documents and probe recall, and prints every inconsistency with its fix. KB is a knowledge base (its live version) or a version label such as docs@2; default the
    --collection. Reads every record's id (never a text or a vector); loads the models to check the
    identity the collections were built with.

    Exit status: 0 healthy; 4 problems remain (each printed with its fix; after --repair, the ones
    it could not fix, such as an identity mismatch or a source that no longer exists); 1 error.
    """
    from mmrag.lifecycle.doctor import examine, repair
    from mmrag.sources import storage_options

    if kb_name and opts.get("collection") and kb_name != opts["collection"]:
        raise click.UsageError(f"KB {kb_name!r} and --collection {opts['collection']!r} disagree; give one")
    base = open_kb(opts, kb_name)
    if not fix:
        report = examine(base, examples=examples)
        emit(report.to_dict()) if as_json else _print_report(report)
        healthy = report.healthy
    else:
        with base.write_lock():  # the examination the repair acts on must not go stale meanwhile
            before = examine(base, examples=examples)
            done = (repair(base, before, allow_outside_roots=allow_outside,
                           storage_options=storage_options(settings_from(opts).source)) if not before.healthy else None)
        if as_json:
            emit({"before": before.to_dict(), "repair": done.to_dict() if done else None})
        else:
            _print_report(before)
            if done is not None:
                _print_repair(done)
        healthy = before.healthy or (done is not None and done.healthy)
    if not healthy:
        sys.exit(EXIT_PROBLEMS)


def _print_report(report: Any) -> None:
    counts = report.counts
    stores = ", ".join(f"{name} {n}" for name, n in counts["stores"].items())
    click.echo(f"doctor {report.label} (collection {report.collection}): manifest expects clip "
               f"{counts['expected']['clip']}, text {counts['expected']['text']}; {stores} ({report.seconds:.1f}s)")
    for f in report.findings:
        click.echo(f"PROBLEM {f.kind} in {f.where}: {f.message}"
                   + (f"; e.g. {', '.join(f.examples)}" if f.examples else ""))
        click.echo(f"        fix: {f.fix}")
    for note in report.notes:
        click.echo(f"note    {note}")
    if report.healthy:
        click.echo("healthy: the manifest, Chroma and the keyword index agree")


def _print_repair(done: Any) -> None:
    click.echo(f"repair: deleted the orphan records of {done.orphans_deleted} document(s); rewrote the keyword rows "
               f"of {done.keyword_rewritten}; re-ingested {len(done.reingested)} document(s) from "
               f"{len(done.paths)} file(s)")
    if done.keyword_rebuilt is not None:
        click.echo(f"repair: rebuilt the unreadable keyword index from the text collection "
                   f"({done.keyword_rebuilt} rows)")
    for failed in (done.ingest or {}).get("failed", []):
        click.echo(f"FAILED  {failed['path']}: {failed['reason']}")
    for u in done.unrepairable:
        click.echo(f"UNREPAIRABLE {u['doc_id']} ({u['source']}): {u['reason']}")
    if done.after is not None:
        click.echo("after the repair:")
        _print_report(done.after)
