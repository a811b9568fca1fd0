#!/usr/bin/env python
"""Scale benchmark (issue 9): what a write and a query cost at 10k, 100k and 1M chunks.

For each size N the script builds a knowledge base of N text chunks plus N/10 image records
through mmrag's own write path, ``Indexer(kb).ingest([corpus])``: the manifest, both Chroma
collections and the tantivy keyword index. The text is SciFact's abstracts (../shared/data/scifact),
split into single-chunk records and cycled, each cycle after the first made unique by a tag
(``[v3]``); the images are 8x8 PNGs with seeded random pixels, one file per image record.

The vectors are not a model's: :class:`SeededVectors` turns a hash of each input into a
deterministic pseudo-random unit vector of the real dimensions (512 for the CLIP role, texts and
images, 384 for the text role), for a few microseconds per item. That is the point: this
benchmark times the stores, not the models (eval/bench/ingest.py and query.py time those), and it
reports no retrieval quality. Random vectors are also the hardest case for HNSW (no clusters).

Per size, each phase runs in a child process of its own (this file with ``--phase``), because the
embedded store is opened by one process at a time and so that each measurement starts cold:

* build: write the corpus, ingest it; records/s (text chunks + image records) and seconds.
* queries: a fresh process; after 20 untimed warm-ups, each of the SciFact train queries
  (``--queries``, >= 100) once through ``Searcher.search(..., k=10)`` for bm25, text, clip and
  hybrid; p50/p95/p99 (the query vectors cost microseconds, so this is the stores' latency).
* rss: a fresh serving process opens the knowledge base and a Searcher and runs 100 hybrid
  queries, then reports its peak RSS (``ru_maxrss``).
* raw (sizes <= ``--raw-max``): the same records written straight into three fresh Chroma
  collections (as mmrag's: CLIP texts, CLIP images, MiniLM texts) with ``collection.add`` in batches
  of :data:`RAW_BATCH`, with the same texts and metadata, reading the files and computing the same
  seeded vectors on the way: what a user's own loop over chromadb does, with no manifest, no keyword
  index, no chunking and no crash safety. The rate the build is judged against.
* baseline (sizes <= ``--baseline-max``): the time to read every text record back from Chroma,
  a lower bound on what every write cost before the keyword index was updated in place (it was
  rebuilt from the whole text collection).
* writes (near the end: they change a few documents): in one process, after an untimed first write
  (which opens everything), ``--reps`` times each: add one new document (a one-record JSONL file,
  ingested by its path), replace one (rewrite one record of a small JSONL that is part of the
  corpus, re-ingest that path), delete one (``Indexer.delete``); plus a no-op ingest of that
  unchanged file. Medians and maxima.
* cli_delete (after writes): ``mmrag delete`` of one bulk document as a user runs it, ``--reps`` times,
  each a fresh process: wall time from start to exit, start-up and opening the stores included.

Disk size is the data dir's allocated blocks. Targets (printed pass/fail beside the figures):
add/replace/delete one document <= 0.5 s at 1M and growing < 2x from 100k to 1M; bm25 p50 <= 20 ms;
hybrid p50 <= 60 ms; serving RSS <= 4 GB; the build's records/s >= 0.9x the raw Chroma loop's. Exit status 1 when a target is missed.

Run it alone on an idle machine; the 1M build takes a long time on 2 cores (Chroma writes about
2,000 vectors/s). With ``--keep`` each size's corpus and data dir stay under ``--workdir`` and a
later run with the same ``--workdir`` measures them again without rebuilding (its writes add and
delete a few documents each time).

Usage::

    .venv/bin/python eval/bench/scale.py [--sizes 10000,100000,1000000] [--workdir DIR] [--keep]
                                         [--queries 200] [--json PATH]        # or: make bench-scale
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmrag import (ChunkSpec, ImageAsset, Indexer, KnowledgeBase, Query, SentenceChunker, Searcher, Settings,
                   TextBlock, configure_logging, resolve_models)

REPO = Path(__file__).resolve().parents[2]
SCIFACT_DIR = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "eval" / "bench" / "results" / "scale.json"
COLLECTION = "scale"
DEFAULT_SIZES = "10000,100000,1000000"
RETRIEVERS = ("bm25", "text", "clip", "hybrid")
#: Pre-chunked below mmrag's 200-token chunks, so a record plus its cycle tag stays one chunk.
RECORD_TOKENS = 190
#: Text records per JSONL shard; each shard folder also holds a tenth as many images.
SHARD_RECORDS = 10_000
#: Records of the small JSONL whose records the replace measurement rewrites.
EDIT_RECORDS = 5
RSS_QUERIES = 100
WARMUP = 20
PROGRESS_EVERY_S = 30.0
TARGETS = {"write_s": 0.5, "write_growth": 2.0, "bm25_p50_ms": 20.0, "hybrid_p50_ms": 60.0, "rss_mb": 4096.0,
           "build_vs_raw": 0.9}
#: Records per ``collection.add`` in the raw Chroma loop (about what users write; NOTES.md measured
#: ~2,100 adds/s at this size on these cores).
RAW_BATCH = 1000
#: Wall-clock start of the run; children get the parent's, so the whole log shares one clock.
_START = {"wall": time.time()}


def say(message: str) -> None:
    """A timestamped progress line (a 1M run takes hours; this is how it is followed)."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - _START['wall']:7.0f}s] {message}", flush=True)


class SeededVectors:
    """Deterministic pseudo-random unit vectors from a hash of each input: the stores' workload, no model.

    Args:
        dim: the vector dimension (512 for the CLIP role, 384 for the text role).
        role: salts the hash, so the two roles give different vectors for one text.
    """

    def __init__(self, dim: int, role: str) -> None:
        self.dim = dim
        self.role = role
        self.name = f"bench-seeded:{role}:{dim}"
        self.precision = "fp32"

    def identity(self) -> dict[str, str | int]:
        """Identity stored with the collections (an index built by a real model refuses it)."""
        return {"embedder": "bench-seeded", "model": f"seeded-{self.role}", "dim": self.dim,
                "preprocess": "-", "precision": "fp32"}

    def _vectors(self, items: Sequence[bytes]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), np.float32)
        salt = self.role.encode()
        # 2 bytes of SHAKE-256 per component: one hash call per item, no RNG set-up per item.
        raw = b"".join(hashlib.shake_256(salt + item).digest(2 * self.dim) for item in items)
        vecs = np.frombuffer(raw, dtype=np.int16).reshape(len(items), self.dim).astype(np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text."""
        return self._vectors([t.encode() for t in texts])

    def embed_images(self, assets: Sequence[ImageAsset]) -> np.ndarray:
        """One vector per image, from its bytes (the loader has already decoded each image once)."""
        return self._vectors([a.read_bytes() for a in assets])

    def iter_image_embeddings(self, assets: Sequence[ImageAsset], labels: Sequence[str] | None = None):  # type: ignore[no-untyped-def]
        """``(index, vector)`` per image, as the indexer reads them from the CLIP embedder."""
        for i, vec in enumerate(self.embed_images(assets)):
            yield i, vec


def open_kb(data_dir: Path) -> KnowledgeBase:
    """The benchmark's knowledge base on ``data_dir``, with the seeded vectors in both roles."""
    # The real backends, named: a fake store is never what a benchmark measures (STYLE.md).
    return KnowledgeBase(data_dir, COLLECTION, resolve_models(Settings()), vector_store="chroma",
                         keyword_index="tantivy", clip=SeededVectors(512, "clip"), text=SeededVectors(384, "text"))


# -- inputs ---------------------------------------------------------------------------------------
def scifact_records(cache: Path) -> list[str]:
    """SciFact's abstracts (title + text), split into single-chunk texts (cached in ``cache``)."""
    if cache.exists():
        return list(json.loads(cache.read_text()))
    parts = sorted(SCIFACT_DIR.glob("corpus.part*.jsonl"))
    if not parts:
        raise SystemExit(f"{SCIFACT_DIR} has no corpus.part*.jsonl: this benchmark needs SciFact's real text")
    chunker = SentenceChunker(ChunkSpec(size=RECORD_TOKENS, overlap=0))
    texts = []
    for part in parts:
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                body = f"{rec.get('title', '')}. {rec.get('text', '')}".strip()
                texts += [c.text for c in chunker.chunk(str(rec["_id"]), [TextBlock(body)])]
    cache.write_text(json.dumps(texts))
    return texts


def cycled(texts: Sequence[str], i: int) -> str:
    """Record ``i`` of the corpus: the texts cycled, each cycle after the first tagged to stay unique."""
    cycle, pos = divmod(i, len(texts))
    return texts[pos] if cycle == 0 else f"{texts[pos]} [v{cycle}]"


def bulk_id(i: int) -> str:
    """The doc id of bulk record ``i`` (what :func:`write_corpus` writes)."""
    return f"c{i:07d}"


def random_bulk_id(rng: np.random.Generator, n: int) -> str:
    """A bulk record of a size-``n`` corpus, at random (the edit file's records excluded)."""
    return bulk_id(int(rng.integers(0, n - EDIT_RECORDS)))


def load_queries(n: int) -> list[str]:
    """The first ``n`` SciFact train queries (cycled if ``n`` is larger)."""
    with open(SCIFACT_DIR / "queries.train.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh if line.strip()]
    return (queries * (n // len(queries) + 1))[:n]


def write_corpus(corpus: Path, n: int) -> dict[str, Any]:
    """Shards of ``SHARD_RECORDS`` single-chunk JSONL records, each beside a tenth as many 8x8 PNGs.

    Sorted discovery then walks text and images shard by shard. The last ``EDIT_RECORDS`` records
    go to ``edit/replace.jsonl``, the small file the replace measurement rewrites.
    """
    from PIL import Image

    texts = scifact_records(corpus.parent.parent / "scifact-chunks.json")  # shared by every size
    rng = np.random.default_rng(0)
    bulk, n_images = n - EDIT_RECORDS, n // 10
    shards = max(1, -(-bulk // SHARD_RECORDS))
    for s in range(shards):
        folder = corpus / f"{s:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "text.jsonl", "w", encoding="utf-8") as out:
            for i in range(s * SHARD_RECORDS, min(bulk, (s + 1) * SHARD_RECORDS)):
                out.write(json.dumps({"_id": bulk_id(i), "text": cycled(texts, i)}) + "\n")
        per_shard = -(-n_images // shards)
        for j in range(s * per_shard, min(n_images, (s + 1) * per_shard)):
            buf = io.BytesIO()
            Image.frombytes("RGB", (8, 8), rng.integers(0, 256, 192, dtype=np.uint8).tobytes()).save(buf, "PNG")
            (folder / f"img{j:07d}.png").write_bytes(buf.getvalue())
    (corpus / "edit").mkdir(exist_ok=True)
    write_edit_file(corpus / "edit" / "replace.jsonl", texts, n, {})
    return {"text_records": n, "image_files": n_images, "shards": shards, "scifact_chunks_per_cycle": len(texts)}


def write_edit_file(path: Path, texts: Sequence[str], n: int, revisions: dict[int, str]) -> None:
    """The small JSONL of records ``e0..``; ``revisions[i]`` tags record ``i``'s text as revised."""
    with open(path, "w", encoding="utf-8") as out:
        for i in range(EDIT_RECORDS):
            text = cycled(texts, n - EDIT_RECORDS + i)
            if i in revisions:
                text += f" Revised {revisions[i]}."
            out.write(json.dumps({"_id": f"e{i}", "text": text}) + "\n")


def disk_bytes(folder: Path) -> int:
    """Allocated bytes under ``folder`` (like ``du``)."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if not p.is_symlink())


# -- phases (each in its own child process) -------------------------------------------------------
def phase_build(home: Path, n: int) -> dict[str, Any]:
    """Write the corpus and ingest it through the Indexer."""
    started = time.perf_counter()
    corpus = write_corpus(home / "corpus", n)
    corpus["seconds"] = round(time.perf_counter() - started, 1)
    say(f"corpus written in {corpus['seconds']} s: {n} text records, {corpus['image_files']} images; ingesting")
    kb = open_kb(home / "data")
    importlib.import_module("chromadb")  # before the clock, as in phase_raw: both time writing, not importing
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = time.monotonic()
            say(f"  build {n}: {done}/{total} files, {kb.bare_store('clip').count()} records in the CLIP collection")

    started = time.perf_counter()
    summary = Indexer(kb).ingest([home / "corpus"], progress=progress)
    seconds = time.perf_counter() - started
    counts = {"clip": kb.bare_store("clip").count(), "text": kb.bare_store("text").count(), "keyword": kb.keyword.count()}
    expected = {"clip": n + n // 10, "text": n, "keyword": n}
    if counts != expected or summary.failed:
        say(f"WARNING: the stores hold {counts}, expected {expected}; failures: {summary.failed[:3]}")
    records = counts["clip"]  # text chunks + image records; each chunk is also in the text store and BM25
    return {"corpus": corpus, "seconds": round(seconds, 1), "records": records, "counts": counts,
            "expected": expected, "records_per_s": round(records / seconds, 1), "indexed_docs": summary.indexed,
            "disk_mb": round(disk_bytes(home / "data") / 2**20, 1),
            "disk_parts_mb": {p.name: round(disk_bytes(p) / 2**20, 1) if p.is_dir() else round(p.stat().st_size / 2**20, 1)
                              for p in sorted((home / "data").iterdir())}}


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean of latencies in ms."""
    a = np.asarray(samples_ms)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def phase_queries(home: Path, n_queries: int) -> dict[str, Any]:
    """Warm latency of each retriever over the SciFact train queries."""
    searcher = Searcher(open_kb(home / "data"))
    queries = load_queries(n_queries)
    out: dict[str, Any] = {}
    for retriever in RETRIEVERS:
        for q in queries[:WARMUP]:
            searcher.search(Query(text=q), 10, retriever=retriever)
        times, empty = [], 0
        for q in queries:
            started = time.perf_counter()
            hits = searcher.search(Query(text=q), 10, retriever=retriever)
            times.append((time.perf_counter() - started) * 1000)
            empty += not hits
        out[retriever] = {**percentiles(times), "empty_results": empty}
        say(f"  {retriever}: p50 {out[retriever]['p50_ms']} ms, p95 {out[retriever]['p95_ms']} ms")
    return out


def phase_rss(home: Path) -> dict[str, Any]:
    """A fresh serving process: open, run 100 hybrid queries, report the peak RSS."""
    started = time.perf_counter()
    searcher = Searcher(open_kb(home / "data"))
    for q in load_queries(RSS_QUERIES):
        searcher.search(Query(text=q), 10, retriever="hybrid")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"queries": RSS_QUERIES, "rss_mb": round(peak_kb / 1024, 1), "seconds": round(time.perf_counter() - started, 2)}


def expect(ok: bool, what: str, summary: Any) -> None:
    """Stop the run when a write did not do what it is timed for (a time of the wrong work is worse than none)."""
    if not ok:
        raise SystemExit(f"{what} did not do what was timed: {summary.to_dict() if summary else 'nothing was deleted'}")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def phase_writes(home: Path, n: int, reps: int) -> dict[str, Any]:
    """Add, replace and delete one document at a time, ``reps`` times each, in one warm process."""
    kb = open_kb(home / "data")
    indexer = Indexer(kb)
    texts = scifact_records(home.parent / "scifact-chunks.json")
    nonce = f"{int(time.time()):x}"  # fresh ids and texts on every run over a kept knowledge base
    writes = home / "writes"
    writes.mkdir(exist_ok=True)

    def add(i: int) -> Any:
        path = writes / f"add-{nonce}-{i}.jsonl"
        path.write_text(json.dumps({"_id": f"new-{nonce}-{i}", "text": cycled(texts, n + i) + f" [{nonce}]"}) + "\n")
        return indexer.ingest([path])

    first_s, summary = _timed(lambda: add(-1))  # opens the stores and loads the indexes: reported, not counted
    expect(summary.indexed == 1, "the first add", summary)
    times: dict[str, list[float]] = {"add": [], "replace": [], "delete": [], "noop": []}
    edit = home / "corpus" / "edit" / "replace.jsonl"
    rng = np.random.default_rng(int(nonce, 16))
    revisions: dict[int, str] = {}  # kept across reps, so each rewrite changes exactly one record
    for i in range(reps):
        seconds, summary = _timed(lambda: add(i))
        expect(summary.indexed == 1, "an add", summary)
        times["add"].append(seconds)

        revisions[i % EDIT_RECORDS] = f"{nonce}-{i}"
        write_edit_file(edit, texts, n, revisions)
        seconds, summary = _timed(lambda: indexer.ingest([edit]))
        expect(summary.indexed == 1 and summary.unchanged == EDIT_RECORDS - 1, "a replace", summary)
        times["replace"].append(seconds)

        seconds, summary = _timed(lambda: indexer.ingest([edit]))
        expect(summary.indexed == 0, "a no-op ingest", summary)
        times["noop"].append(seconds)

        for _ in range(100):  # a bulk record not deleted by an earlier run over a kept knowledge base
            seconds, existed = _timed(lambda: indexer.delete([random_bulk_id(rng, n)]))
            if existed:
                break
        expect(bool(existed), "a delete", None)
        times["delete"].append(seconds)
    out: dict[str, Any] = {"reps": reps, "first_write_s": round(first_s, 3)}
    for op, values in times.items():
        out[op] = {"median_s": round(float(np.median(values)), 4), "max_s": round(max(values), 4),
                   "all_s": [round(v, 4) for v in values]}
        say(f"  {op}: median {out[op]['median_s']} s, max {out[op]['max_s']} s")
    return out


def phase_cli_delete(home: Path, n: int, reps: int) -> dict[str, Any]:
    """``mmrag delete`` of one bulk document, ``reps`` times: the wall time a user waits, start-up and
    opening the stores included (the command line's cost, where ``writes`` times a warm process)."""
    rng = np.random.default_rng(time.time_ns())  # a kept knowledge base: not the ids an earlier run deleted
    times: list[float] = []
    for _ in range(100 * reps):  # a document deleted earlier (by writes or a run before) is tried again
        doc_id = random_bulk_id(rng, n)
        cmd = [sys.executable, "-m", "mmrag", "delete", "--data-dir", str(home / "data"), "--collection", COLLECTION,
               "--profile", "offline", "--json", doc_id]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"mmrag delete {doc_id} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        if json.loads(done.stdout)["deleted"] == 1:
            times.append(seconds)
        if len(times) == reps:
            break
    expect(len(times) == reps, "a CLI delete", None)
    say(f"  CLI delete: median {np.median(times):.2f} s, max {max(times):.2f} s")
    return {"reps": reps, "median_s": round(float(np.median(times)), 3), "max_s": round(max(times), 3),
            "all_s": [round(t, 3) for t in times]}


def phase_raw(home: Path) -> dict[str, Any]:
    """The corpus written straight into Chroma, no mmrag: the build's floor (see the module docstring).

    The same records as the build's, with the same payload: the three collections mmrag writes
    (CLIP texts, CLIP images, MiniLM texts), each text record with its text and the metadata the
    loaders give it, each image record with its size and format. Only the mmrag parts are missing.
    """
    import chromadb

    from PIL import Image

    raw_dir = home / "raw-chroma"
    shutil.rmtree(raw_dir, ignore_errors=True)
    clip_vecs, text_vecs = SeededVectors(512, "clip"), SeededVectors(384, "text")
    started = time.perf_counter()
    client = chromadb.PersistentClient(path=str(raw_dir), settings=chromadb.Settings(anonymized_telemetry=False))
    cosine = {"hnsw": {"space": "cosine"}}
    clip_text, clip_image, text = (client.create_collection(name, configuration=cosine, embedding_function=None)  # type: ignore[arg-type]
                                   for name in ("raw-clip", "raw-image", "raw-text"))
    written = {"clip": 0, "text": 0}

    def add_texts(source: Path, batch: list[tuple[int, str, str]]) -> None:
        ids, docs = [i for _, i, _ in batch], [t for _, _, t in batch]
        metas = [{"doc_id": i, "source": str(source), "doc_type": "jsonl", "modality": "text", "chunk": 0,
                  "start": 0, "end": len(t), "line": line} for line, i, t in batch]
        clip_text.add(ids=ids, embeddings=clip_vecs.embed_texts(docs), metadatas=metas, documents=docs)  # type: ignore[arg-type]
        text.add(ids=ids, embeddings=text_vecs.embed_texts(docs), metadatas=metas, documents=docs)  # type: ignore[arg-type]
        written["clip"] += len(ids)
        written["text"] += len(ids)

    for shard in sorted(p for p in (home / "corpus").iterdir() if p.is_dir()):
        for jsonl in sorted(shard.glob("*.jsonl")):
            batch: list[tuple[int, str, str]] = []
            with open(jsonl, encoding="utf-8") as fh:
                for line, raw in enumerate(fh, 1):
                    record = json.loads(raw)
                    batch.append((line, f"{shard.name}/{record['_id']}", record["text"]))
                    if len(batch) == RAW_BATCH:
                        add_texts(jsonl, batch)
                        batch = []
            if batch:
                add_texts(jsonl, batch)
        images = sorted(shard.glob("*.png"))
        for lo in range(0, len(images), RAW_BATCH):
            part = images[lo:lo + RAW_BATCH]
            blobs, metas = [], []
            for path in part:
                with Image.open(path) as im:  # decoded, as any image loop must
                    im.load()
                    metas.append({"doc_id": f"{shard.name}/{path.name}", "source": str(path), "doc_type": "image",
                                  "modality": "image", "image_index": 0, "width": im.width, "height": im.height,
                                  "format": im.format or ""})
                blobs.append(path.read_bytes())
            ids = [m["doc_id"] for m in metas]
            clip_image.add(ids=ids, embeddings=clip_vecs._vectors(blobs), metadatas=metas)  # type: ignore[arg-type]
            written["clip"] += len(ids)
    seconds = time.perf_counter() - started
    counts = {"clip": clip_text.count() + clip_image.count(), "text": text.count()}
    shutil.rmtree(raw_dir, ignore_errors=True)
    return {"seconds": round(seconds, 1), "records": written["clip"], "counts": counts, "batch": RAW_BATCH,
            "records_per_s": round(written["clip"] / seconds, 1)}


def phase_baseline(home: Path) -> dict[str, Any]:
    """Read every text record back from Chroma: the floor of what each write cost before fe9a38e."""
    store = open_kb(home / "data").bare_store("text")
    seconds, n = _timed(lambda: sum(1 for _ in store.iter_all(include=("metadatas", "documents"))))
    return {"read_all_text_s": round(seconds, 2), "records": n}


# -- orchestration --------------------------------------------------------------------------------
def run_phase(name: str, home: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one phase in a child process (this file) and return its result."""
    out = home / f"phase-{name}.json"
    out.unlink(missing_ok=True)
    say(f"{label(n)}: {name}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--home", str(home), "--sizes", str(n),
           "--queries", str(args.queries), "--reps", str(args.reps), "--phase-out", str(out),
           "--t0", repr(_START["wall"])]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def child(args: argparse.Namespace) -> int:
    home, n = args.home, parse_sizes(args.sizes)[0]
    phases: dict[str, Callable[[], dict[str, Any]]] = {
        "build": lambda: phase_build(home, n), "queries": lambda: phase_queries(home, args.queries),
        "rss": lambda: phase_rss(home), "writes": lambda: phase_writes(home, n, args.reps),
        "baseline": lambda: phase_baseline(home), "raw": lambda: phase_raw(home),
        "cli_delete": lambda: phase_cli_delete(home, n, args.reps)}
    args.phase_out.write_text(json.dumps(phases[args.phase](), indent=2))
    return 0


def measure_size(n: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase for one size; the build is reused from a kept earlier run when it is complete."""
    home = workdir / f"kb-{n}"
    done = home / "build.json"
    reused = done.exists()
    if reused:
        build = json.loads(done.read_text())
        say(f"{label(n)}: reusing the knowledge base built in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        build = run_phase("build", home, n, args)
        done.write_text(json.dumps(build, indent=2))
    say(f"{label(n)}: built {build['records']} records in {build['seconds']} s ({build['records_per_s']} records/s)")
    result: dict[str, Any] = {"chunks": n, "images": n // 10, "build": build, "build_reused": reused}
    result["raw"] = run_phase("raw", home, n, args) if n <= args.raw_max else None
    if result["raw"]:
        ratio = build["records_per_s"] / result["raw"]["records_per_s"]
        say(f"{label(n)}: raw Chroma loop {result['raw']['records_per_s']} records/s; the build is {ratio:.2f}x that")
    for name in ("queries", "rss"):
        result[name] = run_phase(name, home, n, args)
    result["baseline"] = run_phase("baseline", home, n, args) if n <= args.baseline_max else None
    # Last, both: they change a few documents.
    result["writes"] = run_phase("writes", home, n, args)
    result["cli_delete"] = run_phase("cli_delete", home, n, args)
    result["disk_mb_after"] = round(disk_bytes(home / "data") / 2**20, 1)
    if not args.keep and not reused:
        shutil.rmtree(home, ignore_errors=True)
    return result


def parse_sizes(text: str) -> list[int]:
    """``10000,100k,1M`` -> [10000, 100000, 1000000]."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        sizes.append(int(float(part[:-1] if scale > 1 else part) * scale))
    if any(s < 10 * EDIT_RECORDS for s in sizes):
        raise SystemExit(f"sizes must be at least {10 * EDIT_RECORDS}")
    return sizes


def label(n: int) -> str:
    """10000 -> '10k', 1000000 -> '1M'."""
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def machine() -> dict[str, Any]:
    """CPU, SIMD, cores, load and commit: speed figures mean nothing without them (NOTES.md)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"cpu": info.get("model name", platform.processor()), "cpu_family": info.get("cpu family", ""),
            "simd": [f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags], "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "commit": git("rev-parse", "--short", "HEAD"),
            "src_changed": bool(git("status", "--porcelain", "src"))}



# -- report ---------------------------------------------------------------------------------------
def check_targets(sizes: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the figure it was judged on. Write targets are judged at the largest size
    (1M in the full run), their growth between the two largest sizes (100k -> 1M in the full run)."""
    out = []
    ns = sorted(sizes)
    top = ns[-1]
    for op in ("add", "replace", "delete"):
        value = sizes[top]["writes"][op]["median_s"]
        out.append({"target": f"{op} one document at {label(top)} <= {TARGETS['write_s']} s",
                    "value": f"{value:.3f} s", "pass": value <= TARGETS["write_s"]})
        if len(ns) > 1:
            low = sizes[ns[-2]]["writes"][op]["median_s"]
            growth = value / low if low > 0 else float("inf")
            out.append({"target": f"{op}: growth {label(ns[-2])} -> {label(top)} < {TARGETS['write_growth']:g}x",
                        "value": f"{growth:.2f}x", "pass": growth < TARGETS["write_growth"]})
    for n in ns:
        q = sizes[n]["queries"]
        out.append({"target": f"bm25 p50 at {label(n)} <= {TARGETS['bm25_p50_ms']:g} ms",
                    "value": f"{q['bm25']['p50_ms']:.1f} ms", "pass": q["bm25"]["p50_ms"] <= TARGETS["bm25_p50_ms"]})
        out.append({"target": f"hybrid p50 at {label(n)} <= {TARGETS['hybrid_p50_ms']:g} ms",
                    "value": f"{q['hybrid']['p50_ms']:.1f} ms", "pass": q["hybrid"]["p50_ms"] <= TARGETS["hybrid_p50_ms"]})
        if sizes[n].get("raw"):
            ratio = sizes[n]["build"]["records_per_s"] / sizes[n]["raw"]["records_per_s"]
            out.append({"target": f"build at {label(n)} >= {TARGETS['build_vs_raw']:g}x the raw Chroma loop",
                        "value": f"{ratio:.2f}x", "pass": ratio >= TARGETS["build_vs_raw"]})
        rss = sizes[n]["rss"]["rss_mb"]
        out.append({"target": f"serving RSS at {label(n)} <= {TARGETS['rss_mb'] / 1024:g} GB",
                    "value": f"{rss:,.0f} MB", "pass": rss <= TARGETS["rss_mb"]})
    return out


def format_report(report: dict[str, Any]) -> str:
    """Markdown: the figures (sizes as columns), then the targets, pasteable into the README."""
    sizes = {int(k): v for k, v in report["sizes"].items()}
    ns = sorted(sizes)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("text chunks + image records", lambda r: f"{r['chunks']:,} + {r['images']:,}"),
        ("build: records/s (s in all)", lambda r: f"{r['build']['records_per_s']:,.0f} ({r['build']['seconds']:,.0f} s)"),
        (f"raw Chroma loop (add, batches of {RAW_BATCH:,}): records/s; build / raw",
         lambda r: f"{r['raw']['records_per_s']:,.0f}; {r['build']['records_per_s'] / r['raw']['records_per_s']:.2f}x"
         if r.get("raw") else "not run"),
        *[(f"{op} one document, s (median; max)",
           (lambda op: lambda r: f"{r['writes'][op]['median_s']:.3f}; {r['writes'][op]['max_s']:.3f}")(op))
          for op in ("add", "replace", "delete")],
        ("CLI `mmrag delete` of one document, opening included, s (median; max)",
         lambda r: f"{r['cli_delete']['median_s']:.2f}; {r['cli_delete']['max_s']:.2f}" if r.get("cli_delete") else "not run"),
        ("no-op ingest of one file, s", lambda r: f"{r['writes']['noop']['median_s']:.3f}"),
        ("first write of a process, s", lambda r: f"{r['writes']['first_write_s']:.3f}"),
        *[(f"{name} query p50 / p95, ms",
           (lambda name: lambda r: f"{r['queries'][name]['p50_ms']:.1f} / {r['queries'][name]['p95_ms']:.1f}")(name))
          for name in RETRIEVERS],
        ("disk (data dir), MB", lambda r: f"{r['build']['disk_mb']:,.0f}"),
        (f"serving RSS after {RSS_QUERIES} hybrid queries, MB", lambda r: f"{r['rss']['rss_mb']:,.0f}"),
        ("baseline: read all text records back, s",
         lambda r: f"{r['baseline']['read_all_text_s']:.2f}" if r.get("baseline") else "not run"),
    ]
    m = report["machine"]
    lines = [f"Scale benchmark at {m['commit']}{' (src changed)' if m['src_changed'] else ''} ({m['cpus']} CPUs, "
             f"{m['cpu']} family {m['cpu_family']}, {'/'.join(m['simd']) or 'no AVX'}; load average at start {m['load_avg_at_start'][0]}); "
             f"seeded 512/384-d vectors, SciFact text; {report['config']['queries']} queries, "
             f"{report['config']['reps']} writes of each kind", "",
             "| | " + " | ".join(label(n) for n in ns) + " |", "|---|" + "---:|" * len(ns)]
    lines += [f"| {name} | " + " | ".join(fmt(sizes[n]) for n in ns) + " |" for name, fmt in rows]
    lines += ["", "| target | measured | |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'pass' if t['pass'] else 'FAIL'} |" for t in report["targets"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="text chunks per knowledge base (10000,100k,1M)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the knowledge bases are built (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep each built knowledge base in --workdir for a later run")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per retriever (>= 100 for the report)")
    parser.add_argument("--reps", type=int, default=5, help="timed writes of each kind")
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="largest size whose full read-back baseline is measured (it grows faster than linearly)")
    parser.add_argument("--raw-max", type=int, default=1_000_000,
                        help="largest size whose raw Chroma loop (the build's baseline) is measured")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)  # the parent's start, for one clock in the log
    args = parser.parse_args(argv)
    configure_logging()
    if args.phase:
        _START["wall"] = args.t0 or _START["wall"]
        return child(args)
    sizes = parse_sizes(args.sizes)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmrag-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "config": {"queries": args.queries, "reps": args.reps,
                              "workdir": str(workdir), "sizes": sizes}, "sizes": {}}
    say(f"sizes {', '.join(label(n) for n in sizes)} in {workdir}; {report['machine']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.json.parent == RESULTS.parent and not (RESULTS.parent / ".gitignore").exists():
        (RESULTS.parent / ".gitignore").write_text("*\n")  # results are machine-specific: never committed
    for i, n in enumerate(sizes, 1):
        report["sizes"][str(n)] = measure_size(n, workdir, args)
        # Written after every size, so a crash hours into the 1M build keeps the smaller sizes' figures.
        report["complete"] = i == len(sizes)
        report["targets"] = check_targets({int(k): v for k, v in report["sizes"].items()})
        args.json.write_text(json.dumps(report, indent=2))
        print(format_report(report), flush=True)
        say(f"results{'' if report['complete'] else ' so far'} in {args.json}")
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(t["pass"] for t in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
