"""Fit the abstention gate on the HaluEval development set and write its calibration file.

    .venv/bin/python -m eval.calibrate_abstention                      # ../shared/data/halueval_qa
    .venv/bin/python -m eval.calibrate_abstention --check              # fit and report, write nothing

The near-miss answerability set (``eval/datasets/nearmiss.py``) is for evaluation only: the gate is
never fitted on it, so its figures there say how the gate carries over to questions it never saw.

1. builds the development set (``eval/datasets/halueval.py``: 250 answerable questions whose
   passages are ingested, 250 whose passages are not) under ``--workdir`` and ingests its corpus
   with the offline profile (a rerun reuses the ingest);
2. answers every question extractively with the gate off, through ``run_evaluation`` (hybrid
   retrieval, the top 5 documents as context: what ``mmrag eval run`` does), and keeps each answer's
   signals (``block_cos``, ``coverage``, ``sentence_cos`` and the offline reader's ``answerability``);
3. fits a logistic regression (scikit-learn, L2, C=1, standardised inputs) of "the knowledge base
   holds this question's passage" on the signals, and reports the figures the issue asks for at
   the threshold 0.5, both from 5-fold cross-validation (each question judged by a model that never
   saw it) and in-sample;
4. writes ``src/mmrag/assets/abstention.json``: the weights, the threshold, the text model they fit,
   what they were fitted on, the grounding check's scope (``--grounding``), and the cross-validated
   figures, which count the grounding check's refusals (``cv_without_grounding``: the gate alone).

The grounding check (``mmrag.answering.grounding``: a question naming something its context never mentions is
refused) is deterministic and fits nothing; its scope was chosen on the SciFact near-miss set
(``eval/gate_nearmiss.py``), so these HaluEval figures hold it out.

Why 0.5: the gate estimates P(answerable | signals) on a set with equal classes, so 0.5 is the
decision that minimises errors when refusing wrongly and answering wrongly cost the same. The
reader's floor (``--min-answerability``, default 0.5) is the reader's own decision point, not a
fitted value: on HaluEval an unanswerable question's passage is missing altogether, so a fit there
cannot learn what near-miss questions need (a passage on topic that does not answer), and the floor
says it instead. Nothing else is tuned: the features are the signals the extractor computes anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mmrag import check_grounding
from eval.datasets.halueval import convert
from eval.gate_nearmiss import answer_ungated

REPO = Path(__file__).resolve().parent.parent
FEATURES = ("block_cos", "coverage", "sentence_cos", "answerability")
MIN_ANSWERABILITY = 0.5
COLLECTION = "halueval"
THRESHOLD = 0.5
#: Where the grounding check looks (``mmrag.answering.grounding``): chosen on the SciFact near-miss set
#: (``eval/gate_nearmiss.py``), never on HaluEval; the calibration file records it.
GROUNDING = "cited"
SCOPES = ("context", "cited")


def collect(data: Path, workdir: Path) -> list[dict[str, Any]]:
    """Ingest the development set and return one row per question: signals, label, answer scores."""
    convert(data, workdir)
    kb, queries, run, recorder = answer_ungated(workdir / "corpus", workdir / "dev.jsonl", COLLECTION, workdir)
    rows = []
    text_model = kb.text.name
    for q, row in zip(queries, run.rows):
        answer = row["answer"]
        if answer is None or answer["signals"] is None:
            raise SystemExit(f"{q.id}: no extractive answer ({row['errors']})")
        full = recorder.answers[(q.text or "").strip()]
        cited = {c.doc_id for c in full.citations}  # the cited documents' blocks, as the answerer checks
        texts = {"context": [b.content for b in full.blocks],
                 "cited": [b.content for b in full.blocks if b.hit.doc_id in cited]}
        rows.append({"text_model": text_model, "id": q.id, "answerable": q.answerable, "signals": answer["signals"],
                     "contains": row["scores"].get("contains_reference", 0.0),
                     "cites_gold": row["scores"].get("cites_gold", 0.0), "latency_s": answer["latency_s"],
                     "grounded": {scope: check_grounding(q.text or "", texts[scope]).grounded for scope in SCOPES}})
    return rows


def figures(rows: list[dict[str, Any]], p: np.ndarray, threshold: float = THRESHOLD,
            floor: float | None = None, grounding: str | None = None) -> dict[str, float]:
    """The issue's three figures when the gate answers where ``p >= threshold`` (and the reader's floor,
    and the grounding check over ``grounding``'s scope)."""
    answered = p >= threshold
    if floor is not None:
        answered &= np.array([r["signals"]["answerability"] for r in rows]) >= floor
    if grounding is not None:
        if any("grounded" not in r for r in rows):
            raise SystemExit("these rows predate the grounding check: collect them again (drop --from-rows)")
        answered &= np.array([r["grounded"][grounding] for r in rows])
    yes = np.array([r["answerable"] for r in rows])
    contains = np.array([r["contains"] for r in rows])
    cites = np.array([r["cites_gold"] for r in rows])
    return {"unanswerable_refused": float(np.mean(~answered[~yes])),
            "answerable_answered": float(np.mean(answered[yes])),
            "answerable_contains_reference": float(np.mean(contains[yes] * answered[yes])),
            "answered_cite_gold": float(np.mean(cites[yes & answered])) if np.any(yes & answered) else 0.0}


def fit(rows: list[dict[str, Any]], folds: int, features: tuple[str, ...] = FEATURES
        ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The final model, and held-out and in-sample probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.array([[r["signals"][f] for f in features] for r in rows], dtype=np.float64)
    y = np.array([int(r["answerable"]) for r in rows])

    def model(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        mean, scale = xs.mean(axis=0), xs.std(axis=0) + 1e-12
        return mean, scale, LogisticRegression(C=1.0).fit((xs - mean) / scale, ys)

    held_out = np.zeros(len(rows))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        mean, scale, lr = model(x[train], y[train])
        held_out[test] = lr.predict_proba((x[test] - mean) / scale)[:, 1]
    mean, scale, lr = model(x, y)
    in_sample = lr.predict_proba((x - mean) / scale)[:, 1]
    params = {"coef": [float(c) for c in lr.coef_[0]], "intercept": float(lr.intercept_[0]),
              "mean": [float(m) for m in mean], "scale": [float(s) for s in scale]}
    return params, held_out, in_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "halueval_qa",
                        help="the halueval_qa folder")
    parser.add_argument("--workdir", type=Path, default=REPO / "eval" / "reports" / "halueval")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "mmrag" / "assets" / "abstention.json")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="fit and report; do not write --out")
    parser.add_argument("--min-answerability", type=float, default=MIN_ANSWERABILITY,
                        help="the reader's floor (module docstring); a negative value: no floor")
    parser.add_argument("--rows", type=Path, help="also write the collected rows (signals, labels) here as JSON")
    parser.add_argument("--from-rows", type=Path,
                        help="fit on rows written by --rows instead of collecting them again (minutes on 2 cores)")
    parser.add_argument("--grounding", default=GROUNDING, choices=[*SCOPES, "none"],
                        help="where the grounding check looks (mmrag.answering.grounding), or none (default %(default)s)")
    parser.add_argument("--features", default=",".join(FEATURES),
                        help="the signals the gate reads, comma-separated (a subset of: %(default)s); "
                             "the report gives the figures with and without the reader either way")
    args = parser.parse_args(argv)
    features = tuple(f.strip() for f in args.features.split(",") if f.strip())
    if not features or set(features) - set(FEATURES):
        parser.error(f"--features: choose from {', '.join(FEATURES)}")
    floor = args.min_answerability if args.min_answerability >= 0 else None
    grounding = None if args.grounding == "none" else args.grounding
    if args.from_rows:
        rows = json.loads(args.from_rows.read_text(encoding="utf-8"))
    else:
        rows = collect(args.data, args.workdir)
    if args.rows:
        args.rows.write_text(json.dumps(rows), encoding="utf-8")
    params, held_out, in_sample = fit(rows, args.folds, features)
    cv = figures(rows, held_out, floor=floor, grounding=grounding)
    fitted = figures(rows, in_sample, floor=floor, grounding=grounding)
    ungated = figures(rows, np.ones(len(rows)))
    old_params, old_held_out, _ = fit(rows, args.folds, FEATURES[:3])
    latency = sorted(r["latency_s"] for r in rows if r.get("latency_s") is not None) or [None]
    print(json.dumps({"features": features, **params, "min_answerability": floor, "cv": cv, "in_sample": fitted,
                      "no_gate": ungated, "cv_without_reader": figures(rows, old_held_out),
                      "cv_without_floor": figures(rows, held_out, grounding=grounding),
                      "cv_without_grounding": figures(rows, held_out, floor=floor),
                      "answer_p50_s": latency[len(latency) // 2]}, indent=2))
    if not args.check:
        reader = ("answerability from mmrag's offline reader" if "answerability" in features else
                  "the offline reader's answerability measured and left out (cv_without_reader equalled the fit "
                  "with it, and reading it costs ~100 ms an answer)")
        out = {"features": list(features), **params, "threshold": THRESHOLD, "min_answerability": floor,
               "grounding": grounding,
               "text_model": rows[0]["text_model"],
               "fitted_on": f"HaluEval QA development set (eval/datasets/halueval.py, seed 0): "
                            f"{sum(r['answerable'] for r in rows)} answerable, "
                            f"{sum(not r['answerable'] for r in rows)} unanswerable questions (passage not "
                            f"ingested); hybrid retrieval, 5 context documents; {reader}; never the near-miss set "
                            f"(eval/datasets/nearmiss.py); the grounding check's scope ({grounding}) chosen on the "
                            f"SciFact near-miss set (eval/datasets/nearmiss_scifact.py, eval/gate_nearmiss.py)",
               "cv_figures": {k: round(v, 4) for k, v in cv.items()},
               "cv_figures_without_grounding": {k: round(v, 4) for k, v in figures(rows, held_out, floor=floor).items()},
               "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
