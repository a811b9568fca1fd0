"""`mmrag eval run` and `mmrag eval compare` through the CLI, on the sample corpus with the offline models.

Acceptance 3: a degraded index fails the --fail-under gate (exit 4) and `compare` names exactly the
queries that lost their relevant documents.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mmrag.cli import main
from tests.helpers.chromium import assert_renders
from tests.helpers.eval_corpus import SAMPLE_QUERIES, write_dataset

pytestmark = pytest.mark.slow
pytest.importorskip("ragas")



def _mmrag(*args: str, data_dir: Path) -> Any:
    return CliRunner().invoke(
        main, [*args, "--profile", "offline", "--data-dir", str(data_dir), "--collection", "sample"],
        catch_exceptions=False)


def test_run_writes_reports_that_render(sample_kb: tuple[Path, Path], tmp_path: Path) -> None:
    root, data_dir = sample_kb
    dataset = root / "dataset.jsonl"
    result = _mmrag("eval", "run", str(dataset), "--out", str(tmp_path / "out"), "--no-answer", "--k", "5",
                    data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.stdout and "report.html" in result.stdout
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["queries"] == 7 and report["config"]["retriever"] == "hybrid"
    assert "| ndcg@10 |" in (out / "report.md").read_text()
    dom = assert_renders(out / "report.html", tmp_path)
    assert "triangle-image" in dom


def test_degraded_index_fails_the_gate_and_compare_names_lost_queries(sample_kb: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    root, data = sample_kb
    # A private copy of the store: this test deletes documents.
    data_dir = Path(shutil.copytree(data, tmp_path / "data"))
    dataset = write_dataset(tmp_path, [q for q in SAMPLE_QUERIES if "query" in q])
    base_out, new_out = tmp_path / "base", tmp_path / "new"
    run = ["eval", "run", str(dataset), "--no-answer", "--k", "5", "--retriever", "text"]
    result = _mmrag(*run, "--out", str(base_out), "--json", data_dir=data_dir)
    assert result.exit_code == 0, result.output
    base = json.loads((base_out / "report.json").read_text())
    precision = base["metrics"]["precision@5"]["mean"]
    expected = {r["id"] for r in base["rows"]
                if any(i["relevant"] and i["doc_id"] == "visitor-faq.html" for i in r["retrieved"])}
    assert expected == {"hours", "parking"}

    assert _mmrag("delete", "visitor-faq.html", data_dir=data_dir).exit_code == 0
    gate = f"precision@5={precision:.6f}"
    result = _mmrag(*run, "--out", str(new_out), "--fail-under", gate, "--fail-under", "mrr=0.1", data_dir=data_dir)
    assert result.exit_code == 4, result.output
    assert "failed gates: precision@5" in result.stderr and "mrr" not in result.stderr
    assert (new_out / "report.html").is_file()  # reports are written before the gate fails the run

    result = CliRunner().invoke(main, ["eval", "compare", str(base_out / "report.json"), str(new_out), "--json"])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert set(comparison["lost_relevant"]) == expected
    assert all(docs == ["visitor-faq.html"] for docs in comparison["lost_relevant"].values())
    assert comparison["metrics"]["precision@5"]["regressed"] is True
    text = CliRunner().invoke(main, ["eval", "compare", str(base_out), str(new_out), "--fail-on-regression"])
    assert text.exit_code == 4
    assert "2 queries lost relevant documents" in text.output and "hours: lost visitor-faq.html" in text.output
    same = CliRunner().invoke(main, ["eval", "compare", str(base_out), str(base_out), "--fail-on-regression"])
    assert same.exit_code == 0, same.output


def test_bad_gate_fails_before_the_run(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path)
    result = CliRunner().invoke(main, ["eval", "run", str(dataset), "--out", str(tmp_path / "o"),
                                       "--fail-under", "precision@10>0.3"])
    assert result.exit_code == 1 and "METRIC=VALUE" in result.output
    assert not (tmp_path / "o").exists()


def test_answer_metrics_reach_all_three_reports_and_gate_the_run(sample_kb: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """Issue 14, acceptance 2: the answer metrics are in report.json/.md/.html and --fail-under gates them."""
    root, data_dir = sample_kb
    dataset = write_dataset(tmp_path, [
        {"id": "hours", "query": "When does the building close on weekdays?", "relevant": ["visitor-faq.html"],
         "reference": "18:00"},
        {"id": "lift", "query": "When was the east lift back in service?", "relevant": ["maintenance-log.txt"],
         "reference": "the year 1066"},  # not what the log says: this answer cannot contain it
        {"id": "cup", "query": "Who won the 1998 football world cup?", "answerable": False},
        {"id": "mercury", "query": "What is the boiling point of mercury in kelvin?", "answerable": False},
    ])
    out = tmp_path / "out"
    passing = ["--fail-under", "contains_reference=0.5", "--fail-under", "abstention_recall=0.5",
               "--fail-under", "cites_gold=0.5"]
    result = _mmrag("eval", "run", str(dataset), "--out", str(out), *passing, data_dir=data_dir)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert metrics["contains_reference"]["mean"] == 0.5 and metrics["contains_reference"]["n"] == 2
    assert metrics["abstention_recall"]["mean"] == 1.0 and metrics["abstention_recall"]["n"] == 2
    assert metrics["cites_gold"]["mean"] == 1.0
    assert report["config"]["answer_mode"] == "extractive"
    cup = next(r for r in report["rows"] if r["id"] == "cup")
    assert cup["answer"]["guard"] == "abstained:calibrated" and cup["answer"]["abstention"]["p_answerable"] < 0.5
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for name in ("contains_reference", "exact_match", "token_f1", "abstention_recall", "cites_gold"):
        assert f"| {name} |" in markdown and name in html, name

    result = _mmrag("eval", "run", str(dataset), "--out", str(tmp_path / "gated"),
                    "--fail-under", "contains_reference=0.9", data_dir=data_dir)
    assert result.exit_code == 4, result.output
    assert "failed gates: contains_reference" in result.stderr


def test_eval_progress_is_a_tqdm_bar_per_stage_on_a_terminal_and_plain_lines_off_one() -> None:
    import io

    from mmrag.cli.evaluate import StageProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = io.StringIO()
    with StageProgress(log) as progress:
        for done in range(1, 101):
            progress("retrieve", done, 100)
        progress("answer", 1, 100)
    assert log.getvalue().splitlines() == ["retrieve: 50/100", "retrieve: 100/100", "answer: 1/100"]
    assert "\r" not in log.getvalue()

    screen = Terminal()
    with StageProgress(screen) as progress:
        for done in range(1, 4):
            progress("retrieve", done, 3)
        progress("answer", 1, 2)
    drawn = screen.getvalue()
    assert "retrieve: 100%" in drawn and "3/3" in drawn and "answer:  50%" in drawn and "1/2" in drawn
