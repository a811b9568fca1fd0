"""``mmrag access``: show and change the access labels of indexed documents (a metadata write)."""

from __future__ import annotations

from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb


@main.group(name="access")
def access_group() -> None:
    """Per-document access labels (group:NAME, user:NAME).

    Labels are set at ingest (--access, a .mmrag-access file in a folder, a JSONL 'access'
    field) and changed here without re-embedding. A key created with --groups reads documents
    labelled with one of its groups, plus unlabelled ones (unless MMRAG_ACCESS__UNLABELLED=private).
    """


@access_group.command(name="set")
@click.argument("doc_ids", nargs=-1, required=True)
@click.option("--access", "labels", multiple=True, metavar="LABEL",
              help="A label the documents get (repeatable); they lose every other label.")
@click.option("--public", is_flag=True, help="Remove every label (the documents become unlabelled).")
@common_options
@errors_to_click
def access_set(doc_ids: tuple[str, ...], labels: tuple[str, ...], public: bool, as_json: bool, **opts: Any) -> None:
    """Give DOC_IDS exactly the --access labels (or none with --public); no model is loaded."""
    from mmrag.security.relabel import set_labels

    if bool(labels) == public:
        raise click.UsageError("give --access LABEL (repeatable) or --public")
    kb = open_kb(opts)
    done = [set_labels(kb, doc_id, labels) for doc_id in doc_ids]
    if as_json:
        emit(done)
        return
    for d in done:
        click.echo(f"{d['doc_id']}: {', '.join(d['labels']) or '(unlabelled)'} ({d['records']} records updated)")


@access_group.command(name="show")
@click.argument("doc_ids", nargs=-1)
@common_options
@errors_to_click
def access_show(doc_ids: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    """The labels of DOC_IDS (default: every labelled document)."""
    from mmrag.security.rules import LabelTable

    kb = open_kb(opts)
    table = LabelTable(kb.manifest)
    rows = table.get(kb.collection, list(doc_ids)) if doc_ids else table.labelled(kb.collection)
    out = {d: list(rows.get(d, ())) for d in (doc_ids or sorted(rows))}
    if as_json:
        emit(out)
        return
    for doc_id, labels in out.items():
        click.echo(f"{doc_id}: {', '.join(labels) or '(unlabelled)'}")
