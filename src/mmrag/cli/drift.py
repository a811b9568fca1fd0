"""``mmrag drift``: how far a version's recent documents and queries are from its reference."""

from __future__ import annotations

from typing import Any

import click

from mmrag.cli._common import common_options, emit, errors_to_click, main, open_kb, settings_from

#: Exit status of ``mmrag drift --fail`` when a score is above the threshold (as ``eval run --fail-under``).
EXIT_DRIFTED = 4


@main.command()
@click.argument("kb_name", metavar="KB")
@click.option("--version", "number", type=click.IntRange(1), default=None,
              help="Score version N of KB (default: its live version).")
@click.option("--recent", type=click.IntRange(1), default=None,
              help="How many of the most recently updated documents to compare. [env MMRAG_LIFECYCLE__DRIFT_RECENT; "
                   "default 500]")
@click.option("--threshold", type=click.FloatRange(0), default=None,
              help="Drifted above this score. [env MMRAG_LIFECYCLE__DRIFT_THRESHOLD; default 0.2]")
@click.option("--rebuild", is_flag=True,
              help="First replace the reference with what the version holds now (accept its current distribution).")
@click.option("--fail", is_flag=True, help="Exit 4 when a document score is above the threshold (CI and cron gates).")
@common_options
@errors_to_click
def drift(kb_name: str, number: int | None, recent: int | None, threshold: float | None, rebuild: bool, fail: bool,
          as_json: bool, **opts: Any) -> None:
    """Score KB's drift: its recent documents (and the queries a server saw) against its reference.

    Scores are in [0, 1] per modality (text, clip, clip-text, clip-image): 0 for vectors drawn like the
    reference, 1 for vectors nowhere near it. Exit status: 0 ok; 1 error; 4 drifted (with --fail).
    """
    from mmrag.lifecycle import drift as drifting
    from mmrag.lifecycle.versions import Versions

    s = settings_from(opts)
    name = f"{kb_name}@{number}" if number is not None else kb_name
    knowledge = open_kb(opts, name)
    if rebuild:
        with knowledge.write_lock():
            drifting.save(knowledge.manifest, knowledge.collection, drifting.build_reference(knowledge))
    report = drifting.score(knowledge, recent=recent or s.lifecycle.drift_recent,
                            threshold=s.lifecycle.drift_threshold if threshold is None else threshold,
                            label=Versions(knowledge.manifest).label_of(knowledge.collection))
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(f"{report.label}: threshold {report.threshold:g}, {report.recent_documents} recent document(s)")
        for what, scores in (("documents", report.documents), ("queries", report.queries)):
            for modality, entry in scores.items():
                click.echo(f"  {what:<9} {modality:<10} {_verdict(entry, report.threshold)}")
        click.echo(("documents drifted" if report.drifted else "documents: no drift")
                   + ("; queries drifted" if report.queries_drifted else ""))
    if fail and report.drifted:
        raise SystemExit(EXIT_DRIFTED)


def _verdict(entry: Any, threshold: float) -> str:
    sizes = f"(n={entry.n_recent} vs {entry.n_reference})"
    if entry.score is None:
        return f"   -   {sizes} {entry.note}".rstrip()
    verdict = "DRIFTED" if entry.score > threshold else "ok"
    return f"{entry.score:6.3f} {verdict:<7} {sizes} js={entry.js:.3f} mean_distance={entry.mean_distance:.3f}"
