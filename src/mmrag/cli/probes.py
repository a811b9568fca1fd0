"""The ``mmrag probes`` group: synthetic queries with the documents they must find (recall SLIs).

Exit status of ``probes run``: 0 every probe passed; 1 error; 4 some probe failed (as a failed
``mmrag eval run --fail-under`` gate), after the results are printed and recorded.
"""

from __future__ import annotations

from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, settings_from
from mmrag.cli.evaluate import EXIT_GATE_FAILED

#: Exit status of `mmrag probes run` when a probe fails.
EXIT_PROBE_FAILED = EXIT_GATE_FAILED


@main.group()
def probes() -> None:
    """Manage and run the probes of a knowledge base (shared by all its versions)."""


def _manifest(kb_name: str, opts: dict[str, Any]) -> Any:
    # Only the manifest is needed: no model is loaded and no store opened.
    return open_kb({**opts, "collection": kb_name}).manifest


def _require_kb(manifest: Any, kb_name: str) -> None:
    from mmrag.errors import NotFoundError
    from mmrag.lifecycle.versions import Versions

    if not Versions(manifest).list(kb_name):
        raise NotFoundError(f"no knowledge base {kb_name!r}; ingest into it first (`mmrag ingest PATH --collection {kb_name}`)")


@probes.command(name="add")
@click.argument("kb_name", metavar="KB")
@click.option("--query", "query", required=True, help="The probe's query text.")
@click.option("--expect", "expect", multiple=True, required=True, metavar="DOC_ID",
              help="A doc id the query must find in its top k; repeatable (all must be found).")
@click.option("--k", type=int, default=10, show_default=True, help="Documents looked at, 1 to 100.")
@click.option("--name", default=None, help="Probe name (unique per knowledge base). [default: made from the query]")
@click.option("--replace", is_flag=True, help="Overwrite a probe of the same name.")
@common_options
@errors_to_click
def probes_add(kb_name: str, query: str, expect: tuple[str, ...], k: int, name: str | None, replace: bool, as_json: bool,
               **opts: Any) -> None:
    """Add a probe to knowledge base KB: --query must find every --expect document in its top --k."""
    from mmrag.lifecycle.probes import Probe, ProbeStore, kb_name_of, default_name

    kb_name = kb_name_of(kb_name)
    manifest = _manifest(kb_name, opts)
    _require_kb(manifest, kb_name)
    store = ProbeStore(manifest)
    name = name or default_name(query, [p.name for p in store.list(kb_name)])
    probe = store.add(kb_name, Probe(name, query, tuple(expect), k), replace=replace)
    if as_json:
        emit(probe.to_dict())
        return
    click.echo(f"added probe {probe.name} to {kb_name}: top {probe.k} must hold {', '.join(probe.expect)}")


@probes.command(name="list")
@click.argument("kb_name", metavar="KB")
@common_options
@errors_to_click
def probes_list(kb_name: str, as_json: bool, **opts: Any) -> None:
    """List the probes of knowledge base KB, with each version's last recorded probe figures."""
    from mmrag.lifecycle.probes import ProbeStore, kb_name_of
    from mmrag.lifecycle.versions import Versions

    kb_name = kb_name_of(kb_name)
    manifest = _manifest(kb_name, opts)
    items = ProbeStore(manifest).list(kb_name)
    figures = {v.label: v.figures["probes"] for v in Versions(manifest).list(kb_name) if "probes" in v.figures}
    if as_json:
        emit({"kb": kb_name, "probes": [p.to_dict() for p in items], "figures": figures})
        return
    if not items:
        click.echo(f"{kb_name} has no probes; add one with `mmrag probes add {kb_name} --query TEXT --expect DOC_ID`")
    for p in items:
        click.echo(f"{p.name}: top {p.k} of {p.query!r} must hold {', '.join(p.expect)}")
    for label, f in figures.items():
        click.echo(f"last run on {label}: recall {f['recall']:.3f}, {len(f['failed'])} failed")


@probes.command(name="remove")
@click.argument("kb_name", metavar="KB")
@click.argument("name")
@common_options
@errors_to_click
def probes_remove(kb_name: str, name: str, as_json: bool, **opts: Any) -> None:
    """Remove probe NAME from knowledge base KB."""
    from mmrag.lifecycle.probes import ProbeStore, kb_name_of

    kb_name = kb_name_of(kb_name)
    ProbeStore(_manifest(kb_name, opts)).remove(kb_name, name)
    if as_json:
        emit({"kb": kb_name, "removed": name})
        return
    click.echo(f"removed probe {name} from {kb_name}")


@probes.command(name="run")
@click.argument("kb_name", metavar="KB")
@click.option("--version", "number", type=click.IntRange(1), default=None,
              help="Run on version N (kb@N) instead of the live one.")
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="hybrid",
              show_default=True)
@common_options
@errors_to_click
def probes_run(kb_name: str, number: int | None, retriever: str, as_json: bool, **opts: Any) -> None:
    """Run the probes of KB on its live version (or --version N) and record the figures on that version.

    Exit status: 0 every probe passed; 1 error; 4 some probe failed.
    """
    from mmrag.errors import InvalidInputError
    from mmrag.lifecycle.probes import ProbeStore, kb_name_of, record_probe_run, run_probes
    from mmrag.lifecycle.versions import Versions, split_label
    from mmrag.retrieval import Searcher

    number = number or split_label(kb_name)[1]
    kb_name = kb_name_of(kb_name)
    manifest = _manifest(kb_name, opts)
    items = ProbeStore(manifest).list(kb_name)
    if not items:
        raise InvalidInputError(f"{kb_name!r} has no probes; add one with "
                                f"`mmrag probes add {kb_name} --query TEXT --expect DOC_ID`")
    versions = Versions(manifest)
    physical = versions.resolve(kb_name if number is None else f"{kb_name}@{number}")
    _require_kb(manifest, kb_name)
    label = versions.label_of(physical)
    version_kb = open_kb(opts, label)  # by label: version 1's physical name would open the live version
    report = run_probes(Searcher.from_settings(version_kb, settings_from(opts).retrieval), items, retriever=retriever)
    record_probe_run(manifest, physical, report)
    if as_json:
        emit({"kb": kb_name, "version": label, **report.to_dict()})
    else:
        for r in report.results:
            status = "pass" if r.passed else "FAIL"
            why = "" if r.passed else f"  ({r.error or 'missing ' + ', '.join(r.missing)})"
            click.echo(f"{status}  {r.name:<32} recall {r.recall:.2f}  {r.latency_s * 1000:7.1f} ms{why}")
        click.echo(f"{label}: recall {report.recall:.3f} over {len(report.results)} probes; latency p50 "
                   f"{report.p50_latency_s * 1000:.1f} ms, max {report.max_latency_s * 1000:.1f} ms")
    if report.failed:
        click.echo("failed probes: " + ", ".join(report.failed), err=True)
        raise SystemExit(EXIT_PROBE_FAILED)
