#!/usr/bin/env python
"""Offline answer latency: the default answer path against the generated one, in the same run.

Corpus and questions: the HaluEval development set (``eval/datasets/halueval.py``, 250 passages,
questions alternately answerable and not) when ``../shared/data/halueval_qa`` exists, else the sample corpus and
the demo's two questions. The knowledge base is built with the offline profile.

* **mmrag**: the offline default as ``mmrag ask`` builds it (extractive answer, calibrated gate),
  timed end to end per question (hybrid retrieval, extraction, gate; warm, after one untimed
  question), over ``--questions`` questions.
* **baseline**: the same retrieval and question through the generated path
  (``--answer-mode generate``: SmolLM2-135M in-process, the offline default before issue 14), over
  the first ``--baseline`` questions (each takes tens of seconds on 2 cores).

Reported: p50/p95 of each, the ratio baseline p50 / mmrag p50, and the target mmrag p50 <= 5 s.
Run it on an otherwise idle machine.

Usage::

    .venv/bin/python eval/bench/answer.py [--questions 100] [--baseline 8] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrag import (Answerer, Indexer, KnowledgeBase, Searcher, Settings, answer_mode, answer_options, answer_stop,
                   build_chat_model, configure_logging, load_dataset, resolve_models)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from eval.bench.machine import cpu  # noqa: E402  (the repo root is put on the path first)

HALUEVAL = REPO.parent / "shared" / "data" / "halueval_qa"
SAMPLE = REPO / "ingest" / "sample_corpus"
COLLECTION = "bench-answer"
TARGET_P50_S = 5.0
DEMO_QUESTIONS = ["When does the building close on weekdays?", "Who won the 1998 football world cup?"]


def build(workdir: Path) -> tuple[KnowledgeBase, list[str], str]:
    """Ingest the corpus; return the knowledge base, the questions and where they came from."""
    settings = Settings(profile="offline", data_dir=workdir / "data")
    kb = KnowledgeBase(settings.data_dir, COLLECTION, resolve_models(settings))
    if HALUEVAL.is_dir():
        sys.path.insert(0, str(REPO))
        from eval.datasets.halueval import convert

        convert(HALUEVAL, workdir / "halueval")
        Indexer(kb).ingest([workdir / "halueval" / "corpus"])
        queries = load_dataset(workdir / "halueval" / "dev.jsonl")
        # Alternate answerable and unanswerable questions, so that every prefix (--questions N) is half
        # of each. (A shuffle is not enough: the file's order already comes from a seeded shuffle.)
        yes = [q.text or "" for q in queries if q.answerable]
        no = [q.text or "" for q in queries if not q.answerable]
        questions = [q for pair in zip(yes, no) for q in pair]
        return kb, questions, "HaluEval development set, answerable and unanswerable alternately"
    Indexer(kb).ingest([SAMPLE])
    return kb, DEMO_QUESTIONS, "the sample corpus and the demo's questions"


def timed(answerer: Answerer, questions: Sequence[str]) -> dict[str, Any]:
    """Answer each question once (after an untimed warm-up); latency percentiles in seconds."""
    answerer.answer(questions[0])
    seconds, abstained = [], 0
    for q in questions:
        t = time.perf_counter()
        answer = answerer.answer(q)
        seconds.append(time.perf_counter() - t)
        abstained += answer.abstained
    arr = np.array(seconds)
    return {"n": len(seconds), "p50_s": float(np.percentile(arr, 50)), "p95_s": float(np.percentile(arr, 95)),
            "mean_s": float(arr.mean()), "abstained": abstained, "model": answerer.model_name, "mode": answerer.mode}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--baseline", type=int, default=8, help="Questions for the generated path (0: skip).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep (and reuse) the index here.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmrag-bench-answer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    kb, questions, source = build(workdir)
    settings = Settings(profile="offline")
    searcher = Searcher(kb)
    mode = answer_mode(settings, None)
    chat = build_chat_model(settings) if mode != "extractive" else None
    default = Answerer(chat, searcher, k=5, stop=answer_stop(chat.name) if chat else None,
                       **answer_options(settings, kb.text, mode))
    report: dict[str, Any] = {"cpu": cpu(), "python": platform.python_version(), "questions_from": source,
                              "mmrag": timed(default, questions[: args.questions])}
    if args.baseline:
        chat = build_chat_model(settings)
        generated = Answerer(chat, searcher, k=5, stop=answer_stop(chat.name))
        report["baseline"] = timed(generated, questions[: args.baseline])
        report["ratio_p50"] = report["baseline"]["p50_s"] / report["mmrag"]["p50_s"]
    m = report["mmrag"]
    print(f"CPU: {report['cpu']['model']} ({report['cpu']['cores']} cores; {' '.join(report['cpu']['flags'])})")
    print(f"questions: {source}")
    print(f"mmrag default ({m['mode']}, {m['model']}): n={m['n']} p50 {m['p50_s']:.3f} s, p95 {m['p95_s']:.3f} s, "
          f"{m['abstained']} abstained; target p50 <= {TARGET_P50_S:.0f} s: {'met' if m['p50_s'] <= TARGET_P50_S else 'MISSED'}")
    if "baseline" in report:
        b = report["baseline"]
        print(f"baseline (generate, {b['model']}): n={b['n']} p50 {b['p50_s']:.3f} s, p95 {b['p95_s']:.3f} s; "
              f"ratio baseline/mmrag p50 {report['ratio_p50']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if m["p50_s"] <= TARGET_P50_S else 1


if __name__ == "__main__":
    sys.exit(main())
