#!/usr/bin/env python
"""What the abstention gate costs before a hosted model's call (``MMRAG_ANSWER__GATE=true``, issue 25).

On an ingested knowledge base (default: the HaluEval development set that
``eval/calibrate_abstention.py`` or ``eval/datasets/halueval.py`` + ``mmrag ingest`` leave in
``eval/reports/halueval``), for each question: hybrid retrieval of 5 hits, packed into blocks as the
answerer packs them (retrieval is not timed), then, timed:

* **gate**: what ``generate`` with the gate on runs before the LLM call: the extractor with the
  offline reader (the text model embeds the question, the blocks and their sentences; the reader
  reads the question with each block) and the gate's decision;
* **no reader**: the same extractor without the reader (the gate's old inputs), to show what the
  reader adds.

Warm (two untimed questions first). Run it on an otherwise idle machine.

Usage::

    .venv/bin/python eval/bench/gate.py [--workdir eval/reports/halueval] [--questions 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mmrag import (AbstentionGate, Answerer, Extractor, KnowledgeBase, Query, Searcher, Settings, answer_options,
                   load_dataset, resolve_models)

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "eval" / "reports" / "halueval")
    parser.add_argument("--collection", default="halueval")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    settings = Settings(profile="offline", data_dir=args.workdir / "data", answer={"gate": True})
    kb = KnowledgeBase(settings.data_dir, args.collection, resolve_models(settings))
    searcher = Searcher(kb)
    opts = answer_options(settings, kb.text, "generate")
    gated: Extractor = opts["extractor"]
    gate: AbstentionGate = opts["gate"]
    plain = Extractor(kb.text)
    packer = Answerer(None, mode="extractive", extractor=plain)
    queries = [q for q in load_dataset(args.workdir / "dev.jsonl") if q.text][: args.questions + 2]
    timings: dict[str, list[float]] = {"gate": [], "no reader": []}
    refused = 0
    for i, q in enumerate(queries):
        blocks = packer.pack(searcher.search(Query(text=q.text), args.blocks, retriever="hybrid"))
        t = time.perf_counter()
        extraction = gated.extract(q.text or "", blocks)
        decision = gate.decide(extraction) if extraction is not None else None
        t_gate = time.perf_counter() - t
        t = time.perf_counter()
        plain.extract(q.text or "", blocks)
        t_plain = time.perf_counter() - t
        if i >= 2:  # warm-up
            timings["gate"].append(t_gate)
            timings["no reader"].append(t_plain)
            refused += int(decision is not None and not decision.answer)
    report = {name: {"p50_ms": round(1000 * float(np.median(v)), 1), "p95_ms": round(1000 * float(np.percentile(v, 95)), 1)}
              for name, v in timings.items()}
    report.update(questions=len(timings["gate"]), blocks=args.blocks, refused=refused, torch_threads=torch.get_num_threads())
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
