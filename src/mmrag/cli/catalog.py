"""``mmrag collections`` and ``mmrag documents``: what a data dir holds, read from the manifest alone.

Neither loads a model or opens a store, and neither creates anything: a data dir without a
manifest simply holds no collection.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, known_collections, main, require_collection, \
    settings_from

#: ``--status`` words and the manifest's own (``done`` is shown as ``indexed``).
STATUSES = {"indexed": "done", "failed": "failed", "pending": "pending", "skipped": "skipped"}
_SHOWN = {v: k for k, v in STATUSES.items()}


@main.command()
@common_options
@errors_to_click
def collections(as_json: bool, **opts: Any) -> None:
    """List the knowledge bases: live version, documents indexed, chunks, failed documents."""
    from mmrag.lifecycle.versions import Versions
    from mmrag.manifest import Manifest

    s = settings_from(opts)
    rows: list[dict[str, Any]] = []
    names = known_collections(s.data_dir)
    if names:
        manifest = Manifest(Path(s.data_dir) / "manifest.sqlite3")
        try:
            versions = Versions(manifest)
            for name in names:
                physical = versions.resolve(name)
                counts = manifest.counts(physical)
                clip, text = manifest.totals(physical)
                rows.append({"name": name, "live": f"{name}@{versions.live_number(name) or 1}",
                             "versions": len(versions.list(name)), "documents": counts.get("done", 0),
                             "chunks": text, "clip_records": clip, "failed": counts.get("failed", 0),
                             "pending": counts.get("pending", 0), "skipped": counts.get("skipped", 0)})
        finally:
            manifest.close()
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo(f"no collections in {s.data_dir}; create one with `mmrag ingest PATH --collection NAME`")
        return
    click.echo(f"{'NAME':<24} {'LIVE':<28} {'DOCUMENTS':>9} {'CHUNKS':>8} {'FAILED':>6}")
    for r in rows:
        click.echo(f"{r['name']:<24} {r['live']:<28} {r['documents']:>9} {r['chunks']:>8} {r['failed']:>6}")


@main.command()
@click.option("--status", "status", type=click.Choice(sorted(STATUSES)), default=None,
              help="Only documents in this state (indexed, failed with the reason, pending, skipped).")
@common_options
@errors_to_click
def documents(status: str | None, as_json: bool, **opts: Any) -> None:
    """List a collection's documents: doc id, status, chunks, failure reason, source, last update.

    Doc ids are what `mmrag delete` takes (paths relative to the folder that was ingested).
    """
    from mmrag.lifecycle.versions import Versions
    from mmrag.manifest import Manifest

    s = settings_from(opts)
    require_collection(s, s.collection)
    manifest = Manifest(Path(s.data_dir) / "manifest.sqlite3")
    try:
        physical = Versions(manifest).resolve(s.collection)
        listing = manifest.listing(physical, STATUSES[status] if status else None)
    finally:
        manifest.close()
    rows = [{"doc_id": d.doc_id, "status": _SHOWN.get(d.status, d.status), "chunks": d.n_text,
             "clip_records": d.n_clip, "reason": d.reason or None, "source": d.source, "doc_type": d.doc_type,
             "updated": dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds")}
            for d, at in listing]
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo(f"no {status + ' ' if status else ''}documents in {s.collection}")
        return
    for r in rows:
        click.echo(f"{r['status']:<8} {r['chunks']:>5} chunks  {r['updated'][:19]}  {r['doc_id']}  ({r['source']})")
        if r["reason"]:
            click.echo(f"         reason: {r['reason']}")
