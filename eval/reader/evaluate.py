#!/usr/bin/env python
"""Measure the offline reader on data it was never trained on.

    python -m eval.reader.evaluate scifact --data ../shared/data --cache eval/reports/reader
    python -m eval.datasets.nearmiss ../shared/data/halueval_qa --out eval/reports/nearmiss
    python -m eval.reader.evaluate answerability --pairs eval/reports/nearmiss/pairs.jsonl
    python -m eval.reader.evaluate latency --data ../shared/data

* ``scifact``: the train queries (809) of SciFact, the rerank development set. The first stage is
  computed here, without an index: BM25 (k1 0.9, b 0.4) over title + abstract, all-MiniLM-L6-v2
  cosine, and their reciprocal-rank fusion (k 60), which is what ``--retriever hybrid`` does. The
  reader reranks each first stage's top ``--depth`` and nDCG@10 and recall@10 are printed without
  and with the reranker (pure reranking, and the reranker's rank fused with the first stage's).
* ``answerability``: ROC AUC and accuracy at 0.5 on ``pairs.jsonl`` of ``eval/datasets/nearmiss.py``,
  with the refusal rate per kind of unanswerable question.
* ``latency``: p50 and p90 of ``score`` for one query and ``--pairs`` SciFact abstracts, per
  precision and max length.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mmrag import OfflineReader, ReaderSettings, SentenceTransformerEmbedder, ndcg_at, offline_minilm_dir


def load_scifact(folder: Path) -> tuple[dict[str, str], list[tuple[str, str, frozenset[str]]]]:
    corpus = {}
    for part in sorted(folder.glob("corpus*.jsonl")):
        for line in part.open(encoding="utf-8"):
            if line.strip():
                d = json.loads(line)
                corpus[d["_id"]] = (d.get("title", "") + " " + d["text"]).strip()
    rel: dict[str, set[str]] = {}
    with (folder / "qrels" / "train.tsv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row["score"]) > 0:
                rel.setdefault(row["query-id"], set()).add(row["corpus-id"])
    queries = []
    for line in (folder / "queries.train.jsonl").open(encoding="utf-8"):
        q = json.loads(line)
        if q["_id"] in rel:
            queries.append((q["_id"], q["text"], frozenset(rel[q["_id"]])))
    return corpus, queries


def bm25_rank(corpus: dict[str, str], queries: list[str], depth: int, k1: float = 0.9, b: float = 0.4) -> list[list[str]]:
    from sklearn.feature_extraction.text import CountVectorizer

    ids = list(corpus)
    vec = CountVectorizer(lowercase=True, stop_words="english", token_pattern=r"(?u)\b\w+\b")
    tf = vec.fit_transform([corpus[i] for i in ids]).tocsc().astype(np.float64)
    lengths = np.asarray(tf.sum(axis=1)).ravel()
    df = np.asarray((tf > 0).sum(axis=0)).ravel()
    idf = np.log(1 + (len(ids) - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    out = []
    for q in queries:
        terms = [t for t in vec.transform([q]).indices]
        scores = np.zeros(len(ids))
        for t in terms:
            col = tf[:, t]
            rows, f = col.indices, col.data
            scores[rows] += idf[t] * f * (k1 + 1) / (f + norm[rows])
        out.append([ids[i] for i in np.argsort(-scores)[:depth]])
    return out


def dense_rank(corpus: dict[str, str], queries: list[str], depth: int, cache: Path) -> list[list[str]]:
    ids = list(corpus)
    path = cache / "scifact-minilm.npy"
    embedder = SentenceTransformerEmbedder(str(offline_minilm_dir()), precision="fp32")
    if path.is_file():
        docs = np.load(path)
    else:
        docs = np.asarray(embedder.embed_texts([corpus[i] for i in ids]), dtype=np.float32)
        np.save(path, docs)
    qv = np.asarray(embedder.embed_texts(queries), dtype=np.float32)
    return [[ids[i] for i in np.argsort(-row)[:depth]] for row in qv @ docs.T]


def fuse(*lists: list[str], k: int = 60) -> list[str]:
    score: Counter = Counter()
    for ranked in lists:
        for r, d in enumerate(ranked):
            score[d] += 1.0 / (k + r + 1)
    return [d for d, _ in sorted(score.items(), key=lambda kv: -kv[1])]


def recall10(ranked: list[str], rel: frozenset[str]) -> float:
    return len(set(ranked[:10]) & rel) / len(rel)


def cmd_scifact(args: argparse.Namespace) -> None:
    corpus, queries = load_scifact(args.data / "scifact")
    if args.limit:
        queries = queries[: args.limit]
    args.cache.mkdir(parents=True, exist_ok=True)
    first_path = args.cache / "scifact-first-stage.json"
    if first_path.is_file():
        first = json.loads(first_path.read_text())
    else:
        texts = [q for _, q, _ in queries]
        bm25 = bm25_rank(corpus, texts, 100)
        dense = dense_rank(corpus, texts, 100, args.cache)
        first = {"bm25": bm25, "dense": dense, "hybrid": [fuse(a, b)[:100] for a, b in zip(bm25, dense)]}
        first_path.write_text(json.dumps(first))
    reader = OfflineReader.load(folder=args.weights, settings=ReaderSettings(max_length=args.max_length))
    print(f"reader {args.weights or 'package assets'} max_length {args.max_length} precision {reader.precision}")
    stages = [s for s in ("bm25", "hybrid") if s in first]
    results: dict[str, dict[str, float]] = {}
    for stage in stages:
        rows = {"first": [], "rerank": [], "fused": []}
        t0 = time.time()
        for qi, (_, text, rel) in enumerate(queries):
            top = first[stage][qi][: args.depth]
            scores = reader.score(text, [corpus[d] for d in top])
            reranked = [d for _, d in sorted(zip(scores, top), key=lambda x: -x[0])]
            for name, ranked in (("first", first[stage][qi]), ("rerank", reranked), ("fused", fuse(top, reranked))):
                rows[name].append((ndcg_at(ranked, rel, 10), recall10(ranked, rel)))
        for name, vals in rows.items():
            n, r = np.mean(vals, axis=0)
            results[f"{stage}/{name}"] = {"ndcg@10": float(n), "recall@10": float(r)}
            print(f"scifact train ({len(queries)} queries) {stage:6s} {name:6s} depth {args.depth}: "
                  f"nDCG@10 {n:.4f} recall@10 {r:.4f}", flush=True)
        print(f"  {stage} rerank time {time.time() - t0:.0f}s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def cmd_answerability(args: argparse.Namespace) -> None:
    from sklearn.metrics import roc_auc_score

    rows = [json.loads(line) for line in args.pairs.open(encoding="utf-8")]
    reader = OfflineReader.load(folder=args.weights, settings=ReaderSettings(max_length=args.max_length))
    probs = [reader.answerability(r["question"], [r["passage"]])[0] for r in rows]
    labels = [r["label"] for r in rows]
    auc = roc_auc_score(labels, probs)
    acc = np.mean([(p >= 0.5) == bool(y) for p, y in zip(probs, labels)])
    print(f"answerability on {args.pairs} ({len(rows)} pairs): AUC {auc:.3f} accuracy@0.5 {acc:.3f}")
    for kind in sorted({r["kind"] for r in rows}):
        ps = [p for p, r in zip(probs, rows) if r["kind"] == kind]
        word = "kept" if kind == "answerable" else "refused"
        share = np.mean([p >= 0.5 for p in ps]) if kind == "answerable" else np.mean([p < 0.5 for p in ps])
        print(f"  {kind:15s} n={len(ps):3d} {word}@0.5 {share:.3f} median p {statistics.median(ps):.3f}")


def cmd_latency(args: argparse.Namespace) -> None:
    import os

    import torch

    corpus, queries = load_scifact(args.data / "scifact")
    docs = list(corpus.values())[: args.pairs]
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f") if f in open("/proc/cpuinfo").read()]
    print(f"cpu flags: {flags}; torch threads {torch.get_num_threads()}; load {os.getloadavg()}")
    for length in args.lengths:
        for precision in ("fp32", "bf16"):
            reader = OfflineReader.load(folder=args.weights,
                                        settings=ReaderSettings(max_length=length, precision=precision))
            times = []
            for i in range(args.repeats + 2):
                t = time.perf_counter()
                reader.score(queries[i % len(queries)][1], docs)
                times.append(time.perf_counter() - t)
            times = sorted(times[2:])
            print(f"score() {args.pairs} pairs max_length {length} {precision}: p50 {statistics.median(times) * 1000:.0f} ms "
                  f"p90 {times[math.ceil(0.9 * len(times)) - 1] * 1000:.0f} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["scifact", "answerability", "latency"])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", type=Path, default=None, help="folder of trained weights (default: package)")
    parser.add_argument("--cache", type=Path, default=Path("eval/reports/reader"))
    parser.add_argument("--pairs", default=None)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--limit", type=int, default=0, help="first N queries only")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[192, 256])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None, help="also write the scifact figures here")
    args = parser.parse_args(argv)
    if args.what == "answerability":
        args.pairs = Path(args.pairs or "eval/reports/nearmiss/pairs.jsonl")
        cmd_answerability(args)
    elif args.what == "latency":
        args.pairs = int(args.pairs or 20)
        cmd_latency(args)
    else:
        cmd_scifact(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
