"""The ``mmrag snapshot`` group: consistent, checksummed snapshots of a knowledge base, and their restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, require_collection, settings_from


@main.group(name="snapshot")
def snapshot_group() -> None:
    """Take and restore snapshots (manifest, Chroma records with vectors, keyword index, probes)."""


@snapshot_group.command(name="create")
@click.argument("kb")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@common_options
@errors_to_click
def snapshot_create(kb: str, out: Path, as_json: bool, **opts: Any) -> None:
    """Snapshot KB (its live version, or KB@N) into the new folder OUT, under its writer lock.

    Writers of KB wait while the copy runs; searches go on. Nothing is left at OUT if it fails.
    """
    from mmrag.lifecycle import snapshots

    s = settings_from(opts)
    require_collection(s, kb)
    info = snapshots.create(kb, out, data_dir=s.data_dir, store_url=s.store.url, lock_timeout=s.store.lock_timeout,
                            store_timeout=s.store.timeout)
    if as_json:
        emit(info.to_dict())
        return
    c = info.counts
    click.echo(f"snapshot of {info.label} written to {info.path}: {c['documents']} documents, "
               f"{c['clip'] + c['image']} CLIP and {c['text']} text records, {c['keyword']} keyword rows, "
               f"{c['probes']} probes; {info.files} files, {info.size_bytes / 1e6:.1f} MB in {info.seconds:.1f} s")


@snapshot_group.command(name="restore")
@click.argument("snapshot", type=click.Path(path_type=Path, file_okay=False))
@click.option("--as", "as_name", required=True, metavar="NAME", help="The new knowledge base's name (must not exist).")
@common_options
@errors_to_click
def snapshot_restore(snapshot: Path, as_name: str, as_json: bool, **opts: Any) -> None:
    """Verify SNAPSHOT's checksums, then restore it as the new knowledge base NAME and check its counts.

    A damaged snapshot is refused before anything is created; a restore that fails part-way
    removes what it created.
    """
    from mmrag.lifecycle import snapshots

    s = settings_from(opts)
    info = snapshots.restore(snapshot, as_name, data_dir=s.data_dir, store_url=s.store.url,
                             lock_timeout=s.store.lock_timeout, store_timeout=s.store.timeout)
    if as_json:
        emit(info.to_dict())
        return
    c = info.counts
    click.echo(f"restored {info.source_label} as {info.name!r}: {c['documents']} documents, "
               f"{c['clip'] + c['image']} CLIP and {c['text']} text records, {c['keyword']} keyword rows; "
               f"checked {', '.join(info.checked)} in {info.seconds:.1f} s")
