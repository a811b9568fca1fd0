#!/usr/bin/env python
"""Ingest throughput of ``mmrag ingest --engine ray`` against the local engine, on the same files, in one run.

Both runs are the real command (``python -m mmrag ingest``), each on a fresh data dir, over one
corpus of images, a JSONL corpus and PDFs with embedded images; each does everything an ingest does
(hashing, loading, chunking, OCR per ``--ocr``, embedding with ViT-B-32 and MiniLM, writing Chroma,
the keyword index and the manifest). The figure compared is items embedded per second:

* local: items / the run's seconds (model loading included);
* ray: items / (the run's seconds - Ray's start-up), model loading in the actors included; the
  start-up (``ray.init`` and the cluster's first workers) is reported on its own line.

CLIP is ViT-B-32 with random weights (speed does not depend on the weights; no download), the text
model is the offline profile's MiniLM. Run it on an otherwise idle machine: the engines compete
for the same cores with anything else that runs.

Usage::

    .venv/bin/python eval/bench/ingest.py --engine ray [--images 1500] [--records 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
SAMPLE_PDF = REPO / "ingest" / "sample_corpus" / "signs-catalogue.pdf"
TARGET_RATIO = 0.8


def build_corpus(root: Path, images: int, records: int, pdfs: int) -> dict[str, str]:
    """Images (real photos when ../shared has them), a JSONL corpus (SciFact abstracts, else generated), PDFs."""
    sys.path.insert(0, str(REPO))
    from eval.bench.ingest import SCIFACT_DIR, find_images

    (root / "images").mkdir(parents=True)
    paths, where = find_images(images, root / "sources")
    for i, src in enumerate(paths):  # copies: every image is its own document
        shutil.copy(src, root / "images" / f"img{i:05d}{Path(src).suffix.lower()}")
    lines, text_source = [], "generated"
    for part in sorted(SCIFACT_DIR.glob("corpus*.jsonl")) if SCIFACT_DIR.is_dir() else []:
        with part.open() as f:
            for line in f:
                if len(lines) >= records:
                    break
                lines.append(line.rstrip("\n"))
    if lines:
        text_source = f"{len(lines)} SciFact abstracts"
    while len(lines) < records:
        i = len(lines)
        lines.append(json.dumps({"_id": f"gen{i}", "title": f"Note {i}", "text": f"Note {i} records shipment "
                                 f"{i * 7 % 101} to warehouse {i % 13}, {i % 50 + 1} kg, day {i % 28 + 1}. " * 6}))
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (root / "pdfs").mkdir()
    for n in range(pdfs):
        shutil.copy(SAMPLE_PDF, root / "pdfs" / f"catalogue-{n}.pdf")
    return {"images": f"{images} from {where}", "records": text_source, "pdfs": f"{pdfs} x {SAMPLE_PDF.name}"}


def run_ingest(corpus: Path, data_dir: Path, engine: str, extra: Sequence[str]) -> dict[str, Any]:
    env = {**os.environ, "MMRAG_DATA_DIR": str(data_dir), "MMRAG_PROFILE": "offline", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    # A randomly initialised ViT-B-32 on purpose: the figure is throughput, not retrieval quality.
    cmd = [sys.executable, "-m", "mmrag", "ingest", str(corpus), "--json", "--clip-model", "ViT-B-32",
           "--random-weights", "--engine", engine, *extra]
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.monotonic() - started
    if done.returncode not in (0, 3):
        raise SystemExit(f"{engine} ingest failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    items = summary["embeddings"]["clip"] + summary["embeddings"]["text"]
    busy = summary["seconds"] - summary.get("startup_seconds", 0.0)
    return {"engine": engine, "items": items, "clip": summary["embeddings"]["clip"],
            "text": summary["embeddings"]["text"], "indexed": summary["indexed"], "seconds": summary["seconds"],
            "startup_seconds": summary.get("startup_seconds", 0.0), "wall_seconds": wall,
            "items_per_s": items / busy, "workers": summary.get("workers", {}), "failed": len(summary["failed"])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["ray"], default="ray", help="the engine compared with local")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--records", type=int, default=600, help="JSONL records (SciFact abstracts)")
    parser.add_argument("--pdfs", type=int, default=10)
    parser.add_argument("--ocr", choices=["auto", "always", "never"], default="never",
                        help="passed to both runs (never: measure the engines, not OCR)")
    parser.add_argument("--embed-workers", type=int, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET_RATIO}x")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from eval.bench.ingest import machine_info

    with tempfile.TemporaryDirectory(prefix="mmrag-engines-") as tmp:
        root = Path(tmp)
        inputs = build_corpus(root / "corpus", args.images, args.records, args.pdfs)
        extra = ["--ocr", args.ocr]
        load_before = os.getloadavg()[0]
        local = run_ingest(root / "corpus", root / "local", "local", extra)
        ray_extra = extra + (["--embed-workers", str(args.embed_workers)] if args.embed_workers else [])
        ray = run_ingest(root / "corpus", root / "ray", args.engine, ray_extra)
        load_after = os.getloadavg()[0]
    ratio = ray["items_per_s"] / local["items_per_s"]
    machine = machine_info()
    report = {"machine": machine, "inputs": inputs, "ocr": args.ocr, "local": local, "ray": ray, "ratio": ratio,
              "load_average": [load_before, load_after]}
    print(f"mmrag ingest engines: {machine['cpu_count']} CPUs ({machine['cpu']}), bf16 "
          f"{'yes' if machine['bf16_supported'] else 'no'}; ViT-B-32 (random weights) + MiniLM; --ocr {args.ocr}")
    print("inputs: " + "; ".join(f"{k} {v}" for k, v in inputs.items()))
    for r in (local, ray):
        print(f"{r['engine']:<6} {r['items']:>5} items ({r['clip']} clip, {r['text']} text) in {r['seconds']:.1f}s, "
              f"start-up {r['startup_seconds']:.1f}s -> {r['items_per_s']:.1f} items/s; workers {r['workers']}")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"ray / local throughput (start-up excluded): {ratio:.2f}x  {verdict} (>= {TARGET_RATIO}x)")
    print(f"load average before {load_before:.1f}, after {load_after:.1f}")
    if local["indexed"] != ray["indexed"]:
        print(f"WARNING: the engines indexed different counts ({local['indexed']} vs {ray['indexed']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if args.check and ratio < TARGET_RATIO else 0


if __name__ == "__main__":
    raise SystemExit(main())
