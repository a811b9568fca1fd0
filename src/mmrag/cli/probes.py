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


def _manifest(kb: str, opts: dict[str, Any]) -> Any:
    # Only the manifest is needed: no model is loaded and no store opened.
    return open_kb({**opts, "collection": kb}).manifest


def _require_kb(manifest: Any, kb: str) -> None:
    from mmrag.errors import NotFoundError
    from mmrag.lifecycle.versions import Versions

    if not Versions(manifest).list(kb):
        raise NotFoundError(f"no knowledge base {kb!r}; ingest into it first (`mmrag ingest PATH --collection {kb}`)")


@probes.command(name="add")
@click.argument("kb")
@click.option("--query", "query", required=True, help="The probe's query text.")
@click.option("--expect", "expect", multiple=True, required=True, metavar="DOC_ID",
              help="A doc id the query must find in its top k; repeatable (all must be found).")
@click.option("--k", type=int, default=10, show_default=True, help="Documents looked at, 1 to 100.")
@click.option("--name", default=None, help="Probe name (unique per knowledge base). [default: made from the query]")
@click.option("--replace", is_flag=True, help="Overwrite a probe of the same name.")
@common_options
@errors_to_click
def probes_add(kb: str, query: str, expect: tuple[str, ...], k: int, name: str | None, replace: bool, as_json: bool,
               **opts: Any) -> None:
    """Add a probe to knowledge base KB: --query must find every --expect document in its top --k."""
    from mmrag.lifecycle.probes import Probe, ProbeStore, kb_name, default_name

    kb = kb_name(kb)
    manifest = _manifest(kb, opts)
    _require_kb(manifest, kb)
    store = ProbeStore(manifest)
    name = name or default_name(query, [p.name for p in store.list(kb)])
    probe = store.add(kb, Probe(name, query, tuple(expect), k), replace=replace)
    if as_json:
        emit(probe.to_dict())
        return
    click.echo(f"added probe {probe.name} to {kb}: top {probe.k} must hold {', '.join(probe.expect)}")


@probes.command(name="list")
@click.argument("kb")
@common_options
@errors_to_click
def probes_list(kb: str, as_json: bool, **opts: Any) -> None:
    """List the probes of knowledge base KB, with each version's last recorded probe figures."""
    from mmrag.lifecycle.probes import ProbeStore, kb_name
    from mmrag.lifecycle.versions import Versions

    kb = kb_name(kb)
    manifest = _manifest(kb, opts)
    items = ProbeStore(manifest).list(kb)
    figures = {v.label: v.figures["probes"] for v in Versions(manifest).list(kb) if "probes" in v.figures}
    if as_json:
        emit({"kb": kb, "probes": [p.to_dict() for p in items], "figures": figures})
        return
    if not items:
        click.echo(f"{kb} has no probes; add one with `mmrag probes add {kb} --query TEXT --expect DOC_ID`")
    for p in items:
        click.echo(f"{p.name}: top {p.k} of {p.query!r} must hold {', '.join(p.expect)}")
    for label, f in figures.items():
        click.echo(f"last run on {label}: recall {f['recall']:.3f}, {len(f['failed'])} failed")


@probes.command(name="remove")
@click.argument("kb")
@click.argument("name")
@common_options
@errors_to_click
def probes_remove(kb: str, name: str, as_json: bool, **opts: Any) -> None:
    """Remove probe NAME from knowledge base KB."""
    from mmrag.lifecycle.probes import ProbeStore, kb_name

    kb = kb_name(kb)
    ProbeStore(_manifest(kb, opts)).remove(kb, name)
    if as_json:
        emit({"kb": kb, "removed": name})
        return
    click.echo(f"removed probe {name} from {kb}")


@probes.command(name="run")
@click.argument("kb")
@click.option("--version", "number", type=click.IntRange(1), default=None,
              help="Run on version N (kb@N) instead of the live one.")
@click.option("--retriever", type=click.Choice(["clip", "text", "bm25", "hybrid"]), default="hybrid",
              show_default=True)
@common_options
@errors_to_click
def probes_run(kb: str, number: int | None, retriever: str, as_json: bool, **opts: Any) -> None:
    """Run the probes of KB on its live version (or --version N) and record the figures on that version.

    Exit status: 0 every probe passed; 1 error; 4 some probe failed.
    """
    from mmrag.errors import InvalidInputError
    from mmrag.lifecycle.probes import ProbeStore, kb_name, record_probe_run, run_probes
    from mmrag.lifecycle.versions import Versions, split_label
    from mmrag.retrieval import Searcher

    number = number or split_label(kb)[1]
    kb = kb_name(kb)
    manifest = _manifest(kb, opts)
    items = ProbeStore(manifest).list(kb)
    if not items:
        raise InvalidInputError(f"{kb!r} has no probes; add one with "
                                f"`mmrag probes add {kb} --query TEXT --expect DOC_ID`")
    versions = Versions(manifest)
    physical = versions.resolve(kb if number is None else f"{kb}@{number}")
    _require_kb(manifest, kb)
    label = versions.label_of(physical)
    version_kb = open_kb(opts, label)  # by label: version 1's physical name would open the live version
    report = run_probes(Searcher.from_settings(version_kb, settings_from(opts).retrieval), items, retriever=retriever)
    record_probe_run(manifest, physical, report)
    if as_json:
        emit({"kb": kb, "version": label, **report.to_dict()})
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
