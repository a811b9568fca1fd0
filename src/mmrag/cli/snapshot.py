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
@click.argument("kb_name", metavar="KB")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@common_options
@errors_to_click
def snapshot_create(kb_name: str, out: Path, as_json: bool, **opts: Any) -> None:
    """Snapshot KB (its live version, or KB@N) into the new folder OUT, under its writer lock.

    Writers of KB wait while the copy runs; searches go on. Nothing is left at OUT if it fails.
    """
    from mmrag.lifecycle import snapshots

    s = settings_from(opts)
    require_collection(s, kb_name)
    info = snapshots.create(kb_name, out, data_dir=s.data_dir, store_url=s.store.url, lock_timeout=s.store.lock_timeout,
                            store_timeout=s.store.timeout)
    if as_json:
        emit(info.to_dict())
        return
    c = info.counts
    click.echo(f"snapshot of {info.label} written to {info.path}: {c['documents']} documents, "
               f"{c['clip'] + c['image']} CLIP and {c['text']} text records, {c['keyword']} keyword rows, "
               f"{c['probes']} probes; {info.files} files, {info.size_bytes / 1e6:.1f} MB in {info.seconds:.1f} s")
    click.echo(f"signed with this data dir's key {info.key_id} ({s.data_dir / 'snapshot.key'}); to restore it into "
               "another data dir, pass a copy of that file as --key")


@snapshot_group.command(name="restore")
@click.argument("snapshot", type=click.Path(path_type=Path, file_okay=False))
@click.option("--as", "as_name", required=True, metavar="NAME", help="The new knowledge base's name (must not exist).")
@click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="The snapshot.key of the data dir that made SNAPSHOT, when it is another one.")
@click.option("--trust-unsigned", is_flag=True,
              help="Restore a snapshot that no key held here signed (unsigned, or signed elsewhere). Its checksums "
                   "are still checked; its source folders are not trusted.")
@click.option("--source-root", "source_roots", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A folder of this machine that `doctor --repair` and `reindex` may read the restored documents' "
                   "sources under (repeatable). Default: the snapshot's own folders if this data dir signed it, "
                   "else none.")
@common_options
@errors_to_click
def snapshot_restore(snapshot: Path, as_name: str, key_file: Path | None, trust_unsigned: bool,
                     source_roots: tuple[Path, ...], as_json: bool, **opts: Any) -> None:
    """Verify SNAPSHOT, then restore it as the new knowledge base NAME and check its counts.

    SNAPSHOT is checked before anything is created: its signature (this data dir's key, or
    --key), every checksum, and that it holds only the regular files it lists. A snapshot that
    fails is refused; a restore that fails part-way removes what it created.
    """
    from mmrag.lifecycle import snapshots

    s = settings_from(opts)
    info = snapshots.restore(snapshot, as_name, data_dir=s.data_dir, store_url=s.store.url,
                             lock_timeout=s.store.lock_timeout, store_timeout=s.store.timeout, key_file=key_file,
                             trust_unsigned=trust_unsigned, source_roots=source_roots)
    if as_json:
        emit(info.to_dict())
        return
    c = info.counts
    click.echo(f"restored {info.source_label} as {info.name!r}: {c['documents']} documents, "
               f"{c['clip'] + c['image']} CLIP and {c['text']} text records, {c['keyword']} keyword rows; "
               f"checked {', '.join(info.checked)} in {info.seconds:.1f} s")
    trusted = {"own": "signed by this data dir", "key": f"signed by key {info.key_id} (--key)",
               "unsigned": "NOT verified as signed by a key held here (--trust-unsigned)"}[info.trust]
    click.echo(f"snapshot {trusted}; sources may be read under: {', '.join(info.roots) or 'no folder'}")
    if info.outside_roots:
        click.echo(f"note: {info.outside_roots} document source(s) lie outside those folders (e.g. "
                   f"{', '.join(info.outside_examples)}): `mmrag doctor --repair` and `mmrag reindex` will not read "
                   "them. Restore with --source-root DIR for a folder you trust, or pass "
                   "--allow-source-outside-roots to those commands.", err=True)
