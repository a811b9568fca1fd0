"""The reports of an evaluation run: ``report.json`` (everything), ``report.md`` (a summary) and
``report.html`` (one self-contained page; see :mod:`mmrag.evaluation.html`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mmrag.errors import InvalidInputError, NotFoundError
from mmrag.evaluation.runner import EvalRun

JSON_NAME, MARKDOWN_NAME, HTML_NAME = "report.json", "report.md", "report.html"


def write_reports(run: EvalRun, out: Path, *, max_rows: int = 200) -> dict[str, Path]:
    """Write the three reports into ``out`` (created if needed).

    Args:
        run: the evaluation result.
        out: the output folder.
        max_rows: queries shown in the HTML's per-query table (worst first); the JSON has them all.

    Returns:
        ``{"json": path, "markdown": path, "html": path}``.
    """
    from mmrag.evaluation.html import render_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME, "html": out / HTML_NAME}
    paths["json"].write_text(json.dumps(_clean(run.to_dict()), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(run), encoding="utf-8")
    paths["html"].write_text(render_html(run, max_rows=max_rows), encoding="utf-8")
    return paths


def load_report(path: Path) -> EvalRun:
    """Read a ``report.json`` (or the folder holding one).

    Raises:
        NotFoundError: no such file.
        InvalidInputError: the file is not an mmrag evaluation report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    if not path.is_file():
        raise NotFoundError(f"Report not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return EvalRun.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path}: not an mmrag evaluation report ({exc})") from exc


def worst_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ordered worst case first: lowest nDCG@10, then hallucinated answers, then failures."""
    def key(row: dict[str, Any]) -> tuple[float, float, float, str]:
        scores = row["scores"]
        return (scores.get("ndcg@10") or 0.0, -(scores.get("hallucinated") or 0.0), -len(row["errors"]), row["id"])

    return sorted(rows, key=key)


def fmt(value: Any) -> str:
    """A metric value for people: 4 decimals, or an em dash when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run_summary(run: EvalRun) -> list[tuple[str, str]]:
    """(label, value) lines describing the run, shared by the Markdown and HTML reports."""
    cfg, counts = run.config, run.counts
    judge = cfg.get("judge") or {}
    lines = [
        ("Dataset", run.dataset), ("Created", run.created),
        ("Retriever", f"{cfg.get('retriever')} (k={cfg.get('k')})"),
        ("Queries", f"{counts.get('queries')} ({counts.get('text_queries')} with text, "
                    f"{counts.get('image_queries')} with an image)"),
        ("Answered", f"{counts.get('answered')}: {counts.get('answer_selection')}; "
                     f"{counts.get('abstained')} abstained"),
        ("Answer model", cfg.get("answer_model") or "—"),
        ("Hallucination rate by", cfg.get("hallucination_producer") or "— (no answers)"),
        ("Judge", judge.get("model") or "none (no LLM metrics)"),
        ("Failed queries", str(counts.get("failed_queries", 0))),
        ("Total time", f"{run.timings.get('total_s', 0.0):.1f} s"),
    ]
    lines += [(f"Model: {k}", str(v)) for k, v in run.models.items()]
    return lines


def render_markdown(run: EvalRun, worst: int = 5) -> str:
    """A short Markdown summary: the run, the metric table (with producers), the worst queries."""
    out = ["# mmrag evaluation", ""]
    out += [f"- **{label}**: {_md(value)}" for label, value in run_summary(run)]
    out += ["", "| Metric | Mean | n | Produced by |", "|---|---:|---:|---|"]
    for name, m in run.metrics.items():
        out.append(f"| {_md(name)} | {fmt(m['mean'])} | {m['n']} | {_md(m['producer'])} |")
    rows = worst_first(run.rows)[:worst]
    if rows:
        out += ["", f"Worst {len(rows)} queries (by nDCG@10): " + ", ".join(
            f"`{_md(r['id'])}` ({fmt(r['scores'].get('ndcg@10'))})" for r in rows)]
    return "\n".join(out) + "\n"


def _md(text: Any) -> str:
    # Queries and ids are untrusted: keep them from breaking the table or adding markup.
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace("`", "'")


def _clean(value: Any) -> Any:
    # JSON has no NaN: strict parsers (and browsers) reject it.
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
