"""The HTML report: one self-contained file (inline CSS, inline SVG plots, thumbnails as data URIs).

No script runs in the page and nothing is fetched: it opens from disk, offline, in any browser.
Queries, documents and answers are untrusted text and every one of them goes through
:func:`html.escape` (a ``<script>`` in a document shows as text).
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from mmrag.evaluation.report import fmt, run_summary, worst_first
from mmrag.evaluation.runner import EvalRun

THUMB_PX = 64
BINS = 10
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0}dl.meta dt{font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;border:1px solid #d0d7de;padding:8px}
figcaption{font-size:12px;color:#57606a;max-width:300px}
ol.items{margin:0;padding-left:20px}ol.items li{margin:2px 0}.rel{color:#1a7f37;font-weight:600}.irr{color:#57606a}
.snip{color:#57606a;font-size:12px}img.thumb{width:64px;height:auto;border:1px solid #d0d7de;vertical-align:middle;image-rendering:pixelated}
.bad{color:#cf222e;font-weight:600}.ok{color:#1a7f37}.err{color:#cf222e;font-size:12px}.small{font-size:12px;color:#57606a}
"""


def render_html(run: EvalRun, *, max_rows: int = 200) -> str:
    """The whole page for ``run``: run details, summary table, plots, per-query table (worst first)."""
    thumbs = _Thumbnails()
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>mmrag evaluation: {escape(run.dataset)}</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>mmrag evaluation</h1>", '<dl class="meta">']
    parts += [f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in run_summary(run)]
    parts.append("</dl>")
    parts += _summary_table(run)
    parts += _plots(run)
    parts += _query_table(run, max_rows, thumbs)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_table(run: EvalRun) -> list[str]:
    out = ["<h2>Summary</h2>", '<table id="summary"><thead><tr><th>Metric</th><th>Mean</th><th>n</th>'
           "<th>Better</th><th>Produced by</th><th>How</th></tr></thead><tbody>"]
    for name, m in run.metrics.items():
        better = "higher" if m["higher_is_better"] else "lower"
        out.append(f'<tr><td>{escape(name)}</td><td class="num">{fmt(m["mean"])}</td><td class="num">{m["n"]}</td>'
                   f"<td>{better}</td><td>{escape(m['producer'])}</td><td class=\"small\">{escape(m['method'])}</td></tr>")
    out.append("</tbody></table>")
    return out


def _plots(run: EvalRun) -> list[str]:
    means = [(name, m["mean"]) for name, m in run.metrics.items() if m["mean"] is not None]
    out = ["<h2>Plots</h2>", '<div class="plots">']
    if means:
        out.append(f'<figure class="plot" id="plot-means">{_bar_chart(means)}'
                   "<figcaption>Mean of each metric (0 to 1).</figcaption></figure>")
    source = {"abstention_rate": "abstained", "hallucination_rate": "hallucinated"}
    for name, m in run.metrics.items():
        key = source.get(name, name)
        values = [r["scores"][key] for r in run.rows if r["scores"].get(key) is not None]
        if not values:
            continue
        out.append(f'<figure class="plot" id="plot-{escape(name)}">{_histogram(name, values, m["mean"])}'
                   f"<figcaption>{escape(name)}: distribution over {len(values)} queries; "
                   f"produced by {escape(m['producer'])}.</figcaption></figure>")
    out.append("</div>")
    return out


def _bar_chart(items: list[tuple[str, float]]) -> str:
    row_h, label_w, bar_w = 22, 190, 220
    height = row_h * len(items) + 10
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 60}" height="{height}" '
           f'role="img" aria-label="metric means">']
    for i, (name, value) in enumerate(items):
        y = 5 + i * row_h
        w = max(0.0, min(1.0, value)) * bar_w
        svg.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{escape(name)}</text>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row_h - 6}" fill="#f6f8fa"/>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="#0969da"/>'
                   f'<text x="{label_w + bar_w + 4}" y="{y + 15}" font-size="12">{value:.3f}</text>')
    svg.append("</svg>")
    return "".join(svg)


def _histogram(name: str, values: list[float], mean: float | None) -> str:
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, max(0, int(float(v) * BINS)))] += 1
    w, h, pad, bottom, right = 300, 150, 30, 20, 12
    span = w - pad - right
    top = max(counts) or 1
    bw = span / BINS
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
           f'aria-label="{escape(name)} distribution">',
           f'<text x="{pad}" y="12" font-size="12" font-weight="600">{escape(name)}</text>']
    for i, c in enumerate(counts):
        bh = (h - bottom - 20) * c / top
        x, y = pad + i * bw, h - bottom - bh
        svg.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="#54aeff">'
                   f"<title>{i / BINS:.1f}–{(i + 1) / BINS:.1f}: {c}</title></rect>")
    svg.append(f'<line x1="{pad}" y1="{h - bottom}" x2="{pad + span}" y2="{h - bottom}" stroke="#57606a"/>')
    for tick in (0.0, 0.5, 1.0):
        svg.append(f'<text x="{pad + tick * span:.1f}" y="{h - 5}" font-size="10" text-anchor="middle">{tick:g}</text>')
    svg.append(f'<text x="2" y="{h - bottom}" font-size="10">0</text><text x="2" y="30" font-size="10">{top}</text>')
    if mean is not None:
        x = pad + max(0.0, min(1.0, mean)) * span
        svg.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{h - bottom}" stroke="#cf222e" stroke-dasharray="4 3">'
                   f"<title>mean {mean:.3f}</title></line>")
    svg.append("</svg>")
    return "".join(svg)


def _query_table(run: EvalRun, max_rows: int, thumbs: "_Thumbnails") -> list[str]:
    rows = worst_first(run.rows)
    shown = rows[:max_rows]
    out = ["<h2>Per query (worst first)</h2>",
           f'<p class="small">{len(shown)} of {len(rows)} queries, ordered by nDCG@10 (lowest first), then '
           "hallucinated answers, then failures. Green items are relevant. report.json holds every query.</p>",
           '<table id="queries"><thead><tr><th>#</th><th>Query</th><th>Scores</th><th>Retrieved</th>'
           "<th>Answer</th></tr></thead><tbody>"]
    for n, row in enumerate(shown, 1):
        query = escape(row["query"] or "")
        if row.get("image"):
            query += "<br>" + thumbs.img(row["image"], "query image")
        rel = ", ".join(row["relevant"][:10]) + (" …" if len(row["relevant"]) > 10 else "")
        out.append(f'<tr id="q-{escape(row["id"])}"><td class="num">{n}</td>'
                   f'<td><b>{escape(row["id"])}</b><br>{query}<div class="small">relevant: {escape(rel)}</div></td>'
                   f"<td>{_scores(row)}</td><td>{_items(row['retrieved'], thumbs)}</td><td>{_answer(row)}</td></tr>")
    out.append("</tbody></table>")
    return out


def _scores(row: dict[str, Any]) -> str:
    return "<br>".join(f"{escape(k)}: {fmt(v)}" for k, v in row["scores"].items())


def _items(items: list[dict[str, Any]], thumbs: "_Thumbnails") -> str:
    if not items:
        return '<span class="bad">nothing retrieved</span>'
    out = ['<ol class="items">']
    for item in items:
        cls = "rel" if item["relevant"] else "irr"
        page = f" p.{item['page']}" if item.get("page") is not None else ""
        body = f'<span class="{cls}">{escape(item["doc_id"])}{page}</span> <span class="small">{item["score"]:.3f}</span>'
        if item["modality"] == "image":
            body += " " + thumbs.img(item["source"], item["doc_id"])
        elif item.get("text"):
            body += f'<div class="snip">{escape(item["text"])}</div>'
        out.append(f"<li>{body}</li>")
    out.append("</ol>")
    return "".join(out)


def _answer(row: dict[str, Any]) -> str:
    parts = []
    answer = row.get("answer")
    if answer:
        style = "small" if answer["abstained"] else ""
        parts.append(f'<div class="{style}">{escape(answer["text"])}</div>')
        parts.append(f'<div class="small">guard: {escape(answer["guard"])}; cites: '
                     f'{escape(", ".join(answer["citations"]) or "—")}</div>')
    verdict = row.get("hallucination")
    if verdict:
        label = '<span class="bad">hallucinated</span>' if verdict["hallucinated"] else '<span class="ok">supported</span>'
        parts.append(f'<div>{label} <span class="small">({escape(verdict["producer"])})</span></div>')
        parts += [f'<div class="snip">unsupported: {escape(s)}</div>' for s in verdict.get("unsupported", [])[:3]]
        if verdict["hallucinated"] and not verdict.get("unsupported"):
            parts += [f'<div class="snip">least supported ({w["support"]:.2f}): {escape(w["text"])}'
                      f'{" (" + escape("; ".join(w["reasons"])) + ")" if w["reasons"] else ""}</div>'
                      for w in verdict.get("weakest", [])[:2]]
    parts += [f'<div class="err">{escape(e["stage"])}: {escape(e["message"][:300])}</div>' for e in row["errors"]]
    return "".join(parts) or '<span class="small">not answered</span>'


class _Thumbnails:
    """~64 px PNG thumbnails as data URIs, made once per file."""

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def img(self, path: str, alt: str) -> str:
        uri = self._uri(path)
        if uri is None:
            return f'<span class="small">[image {escape(Path(path.split("#")[0]).name)}]</span>'
        return f'<img class="thumb" src="{uri}" alt="{escape(alt)}">'

    def _uri(self, path: str) -> str | None:
        if path not in self._cache:
            self._cache[path] = _thumbnail(path)
        return self._cache[path]


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
