"""The HTML report: one self-contained file (inline CSS, inline SVG plots, thumbnails as data URIs).

No script runs in the page and nothing is fetched: it opens from disk, offline, in any browser.
The markup is a Jinja2 template (``templates/report.html.j2``) rendered with autoescape on, so every
query, document and answer (untrusted text) is escaped where it is written; a ``<script>`` in a
document shows as text. This module only shapes the run into what the template shows: numbers
formatted, plot geometry computed, rows ordered worst first.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path
from typing import Any

from mmrag.evaluation.report import fmt, run_summary, worst_first
from mmrag.evaluation.runner import EvalRun

THUMB_PX = 64
BINS = 10


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("mmrag.evaluation", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env.get_template("report.html.j2")


def render_html(run: EvalRun, *, max_rows: int = 200) -> str:
    """The whole page for ``run``: run details, summary table, plots, per-query table (worst first)."""
    thumbs = _Thumbnails()
    rows = worst_first(run.rows)
    means = [(name, m["mean"]) for name, m in run.metrics.items() if m["mean"] is not None]
    return _template().render(
        run=run, summary=run_summary(run), bars=_bar_chart(means) if means else None,
        histograms=_histograms(run), rows=[_row(row, thumbs) for row in rows[:max_rows]],
        total_rows=len(rows)) + "\n"


def _histograms(run: EvalRun) -> list[dict[str, Any]]:
    source = {"abstention_rate": "abstained", "hallucination_rate": "hallucinated"}
    out = []
    for name, m in run.metrics.items():
        key = source.get(name, name)
        values = [r["scores"][key] for r in run.rows if r["scores"].get(key) is not None]
        if values:
            out.append({**_histogram(values, m["mean"]), "name": name, "count": len(values), "producer": m["producer"]})
    return out


def _bar_chart(items: list[tuple[str, float]]) -> dict[str, Any]:
    row_h, label_w, bar_w = 22, 190, 220
    rows = [{"name": name, "text_y": 5 + i * row_h + 15, "bar_y": 5 + i * row_h + 3,
             "w": f"{max(0.0, min(1.0, value)) * bar_w:.1f}", "value": f"{value:.3f}"}
            for i, (name, value) in enumerate(items)]
    return {"width": label_w + bar_w + 60, "height": row_h * len(items) + 10, "label_x": label_w - 6,
            "bar_x": label_w, "bar_w": bar_w, "bar_h": row_h - 6, "value_x": label_w + bar_w + 4, "rows": rows}


def _histogram(values: list[float], mean: float | None) -> dict[str, Any]:
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, max(0, int(float(v) * BINS)))] += 1
    w, h, pad, bottom, right = 300, 150, 30, 20, 12
    span = w - pad - right
    top = max(counts) or 1
    bw = span / BINS
    bars = []
    for i, c in enumerate(counts):
        bh = (h - bottom - 20) * c / top
        x, y = pad + i * bw, h - bottom - bh
        bars.append({"x": f"{x + 1:.1f}", "y": f"{y:.1f}", "w": f"{bw - 2:.1f}", "h": f"{bh:.1f}",
                     "title": f"{i / BINS:.1f}–{(i + 1) / BINS:.1f}: {c}"})
    marker = None
    if mean is not None:
        marker = {"x": f"{pad + max(0.0, min(1.0, mean)) * span:.1f}", "value": f"{mean:.3f}"}
    return {"width": w, "height": h, "pad": pad, "axis_y": h - bottom, "axis_end": pad + span, "tick_y": h - 5,
            "ticks": [{"x": f"{pad + t * span:.1f}", "label": f"{t:g}"} for t in (0.0, 0.5, 1.0)],
            "top": top, "bars": bars, "mean": marker}


def _row(row: dict[str, Any], thumbs: _Thumbnails) -> dict[str, Any]:
    relevant = ", ".join(row["relevant"][:10]) + (" …" if len(row["relevant"]) > 10 else "")
    retrieved = []
    for item in row["retrieved"]:
        image = item["modality"] == "image"
        retrieved.append({"cls": "rel" if item["relevant"] else "irr", "doc_id": item["doc_id"],
                          "page": f" p.{item['page']}" if item.get("page") is not None else "",
                          "score": f"{item['score']:.3f}",
                          "thumb": thumbs.img(item["source"], item["doc_id"]) if image else None,
                          "text": None if image else item.get("text")})
    return {"id": row["id"], "query": row["query"] or "",
            "image": thumbs.img(row["image"], "query image") if row.get("image") else None,
            "relevant": relevant, "scores": [(k, fmt(v)) for k, v in row["scores"].items()],
            "retrieved": retrieved, "answer": _answer(row)}


def _answer(row: dict[str, Any]) -> dict[str, Any]:
    answer, verdict = row.get("answer"), row.get("hallucination")
    shown: dict[str, Any] = {"answer": None, "verdict": None,
                             "errors": [{"stage": e["stage"], "message": e["message"][:300]} for e in row["errors"]]}
    if answer:
        shown["answer"] = {"text": answer["text"], "abstained": answer["abstained"], "guard": answer["guard"],
                           "cites": ", ".join(answer["citations"]) or "—"}
    if verdict:
        weakest = []
        if verdict["hallucinated"] and not verdict.get("unsupported"):
            weakest = [{"support": f"{w['support']:.2f}", "text": w["text"], "reasons": "; ".join(w["reasons"])}
                       for w in verdict.get("weakest", [])[:2]]
        shown["verdict"] = {"hallucinated": verdict["hallucinated"], "producer": verdict["producer"],
                            "unsupported": verdict.get("unsupported", [])[:3], "weakest": weakest}
    return shown


class _Thumbnails:
    """~64 px PNG thumbnails as data URIs, made once per file."""

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def img(self, path: str, alt: str) -> dict[str, Any]:
        """What the template's ``thumb`` macro shows: the data URI, or the file's name when unreadable."""
        if path not in self._cache:
            self._cache[path] = _thumbnail(path)
        return {"uri": self._cache[path], "alt": alt, "name": Path(path.split("#")[0]).name}


def _thumbnail(path: str) -> str | None:
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():  # images embedded in PDFs/DOCX have no file of their own
        return None
    try:
        with Image.open(p) as im:
            im.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEGs decode at reduced size
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
