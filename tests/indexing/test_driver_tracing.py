"""Ingest stages are traced (issue 13): one run yields mmrag.ingest with its stages as children."""

from __future__ import annotations

from pathlib import Path

from mmrag.indexing import Indexer
from tests.helpers.tracing import memory_exporter


def test_an_ingest_yields_its_stage_spans_under_one_root(hashing_kb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exporter = memory_exporter()
    try:
        root = tmp_path / "corpus"
        root.mkdir()
        for i in range(3):
            (root / f"note{i}.txt").write_text(f"Note {i} about lanterns and harbours.\n")
        summary = Indexer(hashing_kb).ingest([root])
        spans = exporter.get_finished_spans()
    finally:
        exporter.shutdown()
    assert summary.indexed == 3
    by_name: dict[str, list] = {}  # type: ignore[type-arg]
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (run,) = by_name["mmrag.ingest"]
    assert run.attributes["mmrag.collection"] == "test" and run.attributes["mmrag.indexed"] == 3
    for stage in ("plan", "repair", "load", "embed", "write", "keyword"):
        assert f"mmrag.ingest.{stage}" in by_name, (stage, sorted(by_name))
        for s in by_name[f"mmrag.ingest.{stage}"]:
            assert s.context.trace_id == run.context.trace_id and s.parent is not None, stage
            assert s.parent.span_id == run.context.span_id, f"{stage} is not a child of the run"
            assert s.attributes["mmrag.collection"] == "test"
    assert len(by_name["mmrag.ingest.load"]) == 3
    (write,) = by_name["mmrag.ingest.write"]
    assert write.attributes["mmrag.documents"] == 3 and write.attributes["mmrag.text"] == 3
