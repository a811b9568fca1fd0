#!/usr/bin/env python
"""Ingest-speed benchmark: mmrag's CLIP pipeline against the naive way, in one run.

Both sides embed the same files with the same ViT-B-32 architecture and the same random weights
(``torch.manual_seed`` before ``create_model_and_transforms(..., pretrained=None)``; speed does not
depend on the weights) and write the vectors to a fresh Chroma collection. The timed work is
decode + embed + write, after an untimed warm-up of each pipeline.

* naive: chroma's own ``OpenCLIPEmbeddingFunction`` and ``ImageLoader`` attached to a collection,
  fed with ``collection.add(uris=...)`` / ``collection.add(documents=...)``: fp32, one item per
  forward pass, text padded to 77 tokens, then one write of everything.
* mmrag: ``OpenClipEmbedder`` (``precision="auto"``) ``embed_texts`` / ``iter_image_embeddings``,
  then ``ChromaStore.upsert`` of ``Record``\\ s, as ``mmrag.indexing`` does.

Every (pipeline, modality) pair runs in its own child process (this script with ``--only``), so
each peak RSS (``ru_maxrss``, a process-wide high-water mark) belongs to that pair alone. The parent
prints the table and checks that the two pipelines' vectors agree: speed without agreement means
nothing.

Run it on an otherwise idle machine: with two torch threads on two cores, any other busy process
stalls every parallel region, and both rates collapse (the report warns when a run got fewer
CPUs than threads). It is one file on purpose: each child re-runs this same file.

Usage::

    .venv/bin/python eval/bench/ingest.py [--images 240] [--texts 300] [--json out.json] [--matmul-bound]
    make bench   # the same with --matmul-bound
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from eval.bench.machine import isa_caps  # noqa: E402  (the repo root is put on the path first)

MODEL = "ViT-B-32"
SEED = 0
TARGET_RATIO = 3.0
#: Peak RSS of the mmrag process at most this times the naive one's (issue 26: within 10%).
MAX_RSS_RATIO = 1.10
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
COCO_DIR = SHARED / "coco_mini_captions" / "val2017"
SCIFACT_DIR = SHARED / "scifact"
PIPELINES = ("naive", "mmrag")
MODALITIES = ("images", "texts")


# -- inputs ---------------------------------------------------------------------------------------
def find_images(n: int, workdir: Path, image_dir: Path | None = None) -> tuple[list[str], str]:
    """Return ``n`` image paths (real files cycled when there are fewer) and where they came from.

    Order of preference: ``image_dir``, the COCO photos in ../shared, ``skimage.data`` photos,
    synthetic photo-like JPEGs (so the benchmark runs on a clone without ../shared).
    """
    files: list[Path] = []
    source = ""
    for folder in (image_dir, COCO_DIR):
        if folder is not None and folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            if files:
                source = str(folder)
                break
    if not files:
        files, source = _skimage_images(workdir / "skimage")
    if not files:
        files, source = _synthetic_images(workdir / "synthetic", count=48)
    paths = [str(files[i % len(files)]) for i in range(n)]
    return paths, f"{len(files)} files from {source}" + (f", cycled to {n}" if n > len(files) else "")


def _skimage_images(folder: Path) -> tuple[list[Path], str]:
    try:
        from skimage import data
    except ImportError:
        return [], ""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "camera", "coins", "moon", "page", "text", "brick", "grass", "gravel"):
        try:
            array = getattr(data, name)()
        except Exception:  # noqa: BLE001 - some need a download; skip those
            continue
        path = folder / f"{name}.jpg"
        Image.fromarray(array).convert("RGB").save(path, quality=90)
        out.append(path)
    return out, "skimage.data" if out else ""


def _synthetic_images(folder: Path, count: int) -> tuple[list[Path], str]:
    """Photo-sized JPEGs with gradients, shapes and noise (decode cost like a real photo's)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        rng = np.random.default_rng(i)
        h, w = 480, 640
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3) * (xx / w)[..., None] + rng.uniform(0, 255, 3) * (yy / h)[..., None]
        img = Image.fromarray(np.clip(base / 2 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            box = (x0, y0, x0 + int(rng.integers(20, 300)), y0 + int(rng.integers(20, 200)))
            fill = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        path = folder / f"synthetic_{i:03d}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out, "synthetic images (no ../shared, no skimage)"


def load_texts(n: int, chunk_size: int, overlap: int) -> tuple[list[str], str]:
    """Return ``n`` chunks of real prose (SciFact abstracts) cut by mmrag's SentenceChunker."""
    from mmrag import ChunkSpec, SentenceChunker, TextBlock

    chunker = SentenceChunker(ChunkSpec(size=chunk_size, overlap=overlap))
    chunks: list[str] = []
    parts = sorted(SCIFACT_DIR.glob("corpus*.jsonl")) if SCIFACT_DIR.is_dir() else []
    source = f"SciFact abstracts ({SCIFACT_DIR})" if parts else "generated sentences"
    for doc_id, text in _scifact_docs(parts) if parts else _generated_docs():
        chunks.extend(c.text for c in chunker.chunk(doc_id, [TextBlock(text)]))
        if len(chunks) >= n:
            break
    return chunks[:n], f"{source}, SentenceChunker(size={chunk_size}, overlap={overlap})"


def _scifact_docs(parts: Sequence[Path]) -> Any:
    for part in parts:
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield str(rec["_id"]), f"{rec.get('title', '')}\n\n{rec.get('text', '')}".strip()


def _generated_docs() -> Any:
    rng = np.random.default_rng(SEED)
    subjects = ["The committee", "A small team", "Our model", "The river", "Each sample", "The old bridge", "Researchers"]
    verbs = ["reported", "measured", "described", "questioned", "reviewed", "compared", "estimated"]
    objects = ["the annual rainfall", "a sharp rise in costs", "the cell counts", "three new species",
               "the delay at the port", "its own earlier results", "the effect of the treatment"]
    tails = ["after a long winter.", "in the second trial.", "with some caution.", "across twelve sites.",
             "despite missing data.", "for the first time.", "using a simple survey."]
    for i in range(100_000):
        sentences = [" ".join(rng.choice(group) for group in (subjects, verbs, objects, tails))
                     for _ in range(int(rng.integers(8, 20)))]
        yield f"gen{i}", " ".join(sentences)


# -- the two pipelines ----------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _meta(modality: str, i: int, item: str) -> dict[str, Any]:
    return {"doc_id": f"{modality}{i}", "modality": modality[:-1], "source": item if modality == "images" else "bench"}


def _client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


class NaivePipeline:
    """The naive way: chroma's own OpenCLIPEmbeddingFunction + ImageLoader on a collection.

    chromadb 1.5.9, ``chromadb/utils/embedding_functions/open_clip_embedding_function.py``:
    ``__call__`` loops over the inputs one at a time; ``_encode_image`` does
    ``preprocess(PIL.Image.fromarray(img)).unsqueeze(0)`` -> ``encode_image`` under ``torch.no_grad``
    -> divide by the norm; ``_encode_text`` does ``tokenizer(text)`` (padded to 77) -> ``encode_text``.
    The model stays fp32 and in train mode (the class never calls ``eval()``).
    ``chromadb/utils/data_loaders.py`` ``ImageLoader`` turns every URI into ``np.array(Image.open(uri))``
    (a thread pool of cpu_count) before the function runs; ``Collection.add`` then writes all at once.
    We use those classes themselves (no re-implementation), with ``checkpoint=None`` (random weights).
    """

    def __init__(self, workdir: Path) -> None:
        import torch
        from chromadb.utils.data_loaders import ImageLoader
        from chromadb.utils.embedding_functions.open_clip_embedding_function import OpenCLIPEmbeddingFunction

        torch.manual_seed(SEED)
        self.ef = OpenCLIPEmbeddingFunction(model_name=MODEL, checkpoint=None, device="cpu")  # type: ignore[arg-type]
        self.client = _client(workdir / "naive-chroma")
        self.loader = ImageLoader()
        self.precision = "fp32"

    def ingest(self, name: str, modality: str, items: Sequence[str]) -> dict[str, float]:
        col = self.client.create_collection(
            name, embedding_function=self.ef, data_loader=self.loader, configuration={"hnsw": {"space": "cosine"}}
        )
        ids = [f"{modality}{i}" for i in range(len(items))]
        metas = [_meta(modality, i, it) for i, it in enumerate(items)]
        start = time.perf_counter()
        if modality == "images":
            col.add(ids=ids, uris=list(items), metadatas=metas)  # type: ignore[arg-type]
        else:
            col.add(ids=ids, documents=list(items), metadatas=metas)  # type: ignore[arg-type]
        return {"seconds": time.perf_counter() - start}

    def read_back(self, name: str, n: int, modality: str) -> np.ndarray:
        return _read_back(self.client, name, n, modality)


class MmragPipeline:
    """mmrag: OpenClipEmbedder (batched, bf16 where it agrees) + ChromaStore.upsert of Records."""

    def __init__(self, workdir: Path, batch_size: int = 32, precision: str = "auto") -> None:
        import torch

        from mmrag import ClipSpec, OpenClipEmbedder, open_client

        torch.manual_seed(SEED)
        self.emb = OpenClipEmbedder(ClipSpec(MODEL, pretrained=None, precision=precision, batch_size=batch_size))
        self.client = open_client(workdir / "mmrag-data")
        self.precision = self.emb.precision
        #: Each tower's candidates, their probe times and agreements (mmrag.numerics).
        self.numerics = {part: c.as_dict() | {"line": c.describe(), "cached": c.cached}
                         for part, c in self.emb.numerics.items()}

    def ingest(self, name: str, modality: str, items: Sequence[str]) -> dict[str, float]:
        from mmrag import ChromaStore, ImageAsset, LoadError, Record

        store = ChromaStore(self.client, name, self.emb.identity())
        start = time.perf_counter()
        if modality == "images":
            vecs: list[Any] = [None] * len(items)
            for i, vec in self.emb.iter_image_embeddings([ImageAsset(path=p) for p in items]):
                if isinstance(vec, LoadError):
                    raise vec
                vecs[i] = vec
            docs: Sequence[str | None] = [None] * len(items)
        else:
            vecs = list(self.emb.embed_texts(items))
            docs = items
        embedded = time.perf_counter()
        # .tolist() as mmrag.indexing builds its Records.
        store.upsert([Record(f"{modality}{i}", v.tolist(), _meta(modality, i, it), d)
                      for i, (v, it, d) in enumerate(zip(vecs, items, docs))])
        end = time.perf_counter()
        return {"seconds": end - start, "embed_seconds": embedded - start, "write_seconds": end - embedded}

    def read_back(self, name: str, n: int, modality: str) -> np.ndarray:
        return _read_back(self.client, name, n, modality)


def _read_back(client: Any, name: str, n: int, modality: str) -> np.ndarray:
    """The stored vectors in item order (also proves every item was written)."""
    col = client.get_collection(name, embedding_function=None)
    res = col.get(ids=[f"{modality}{i}" for i in range(n)], include=["embeddings"])
    by_id = dict(zip(res["ids"], res["embeddings"]))
    return np.asarray([by_id[f"{modality}{i}"] for i in range(n)], dtype=np.float32)


def load_pipeline(pipeline: str, workdir: Path, *, threads: int | None = None, batch_size: int = 32,
                  precision: str = "auto") -> NaivePipeline | MmragPipeline:
    """Set the torch thread count (the same for both pipelines) and load one pipeline's model."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    workdir.mkdir(parents=True, exist_ok=True)
    return NaivePipeline(workdir) if pipeline == "naive" else MmragPipeline(workdir, batch_size, precision)


def run_pipeline(pipe: NaivePipeline | MmragPipeline, modality: str, items: Sequence[str], *,
                 warmup: int = 32) -> tuple[dict[str, Any], np.ndarray]:
    """Warm ``pipe`` up (untimed), time its ingest of ``items``; return stats and the stored vectors."""
    import torch

    # The first calls set up kernels (slow in bf16); the warm-up also opens Chroma's files.
    if warmup:
        pipe.ingest(f"warmup-{modality}", modality, list(items[:warmup]))
    rss_ready = _rss_mib()
    cpu0 = time.process_time()
    timing = pipe.ingest(f"bench-{modality}", modality, items)
    cpu_seconds = time.process_time() - cpu0
    stats: dict[str, Any] = {
        "pipeline": "naive" if isinstance(pipe, NaivePipeline) else "mmrag", "modality": modality,
        "items": len(items), **timing, "items_per_s": len(items) / timing["seconds"],
        "precision": pipe.precision, "numerics": getattr(pipe, "numerics", {}),
        "torch_threads": torch.get_num_threads(),
        "rss_before_mib": rss_ready, "peak_rss_mib": _peak_rss_mib(),
        # CPU-seconds per wall second of the timed part: ~threads when the process had the CPUs
        # to itself, less when other processes competed (then the numbers are noisy).
        "cpu_busy": cpu_seconds / timing["seconds"],
    }
    return stats, pipe.read_back(f"bench-{modality}", len(items), modality)


# -- agreement and report -------------------------------------------------------------------------
def agreement(naive: np.ndarray, mmrag: np.ndarray, items: Sequence[str]) -> dict[str, float]:
    """Row-wise cosine of the two pipelines' vectors, with references that make it meaningful.

    Random-weight CLIP maps different inputs to fairly similar vectors, so a high cosine alone
    proves little: ``between_items_mean`` is the naive vectors' mean cosine across *different*
    items, and ``self_retrieval_at_1`` the share of (distinct) items whose nearest naive vector,
    searched with the mmrag vector, is their own.
    """
    a = naive / np.linalg.norm(naive, axis=1, keepdims=True)
    b = mmrag / np.linalg.norm(mmrag, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item, i)
    uniq = np.asarray(sorted(first.values()))
    sim = b[uniq] @ a[uniq].T
    off = (a[uniq] @ a[uniq].T)[~np.eye(len(uniq), dtype=bool)]
    return {
        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
        "between_items_mean": float(off.mean()) if off.size else float("nan"),
        "self_retrieval_at_1": float((sim.argmax(axis=1) == np.arange(len(uniq))).mean()),
        "distinct_items": int(len(uniq)),
    }


def clip_token_lengths(texts: Sequence[str]) -> dict[str, float]:
    """How long the chunks are in CLIP tokens (77 = truncated; trimming only helps shorter batches)."""
    import open_clip

    tokens = open_clip.get_tokenizer(MODEL)(list(texts))
    lengths = (tokens != 0).sum(dim=1).numpy()
    ctx = tokens.shape[1]
    return {"median": float(np.median(lengths)), "truncated_share": float((lengths >= ctx).mean()), "context": int(ctx)}


def matmul_bound(threads: int, batch_size: int = 32, repeats: int = 5) -> dict[str, Any]:
    """The fastest any pipeline could embed on this machine if matmuls were all it did.

    Each tower's matmul work per item is counted by torch's ``FlopCounterMode`` on one fp32 item
    (a 224-pixel image; a text at CLIP's full 77 tokens, as the SciFact chunks are), and the
    matmul rate is measured here on one MLP layer at ``batch_size``, in fp32 and in each int8 engine
    (:data:`mmrag.INT8_ENGINES`). Work / best rate is a floor on the time per item that
    no kernel choice can beat; its ratio to the naive rate is a ceiling on the speed-up. With the
    kernel libraries capped at AVX2 it says whether a target is reachable at all.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmrag import INT8_ENGINES, quantize_linear_int8

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"rates": {}, "work": {}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    model.eval()
    tokens = torch.randint(1, 49000, (1, 77))
    # nn.MultiheadAttention's fast path is one fused op the counter has no formula for.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode():
            for modality, run in (("images", lambda: model.encode_image(torch.rand(1, 3, 224, 224))),
                                  ("texts", lambda: model.encode_text(tokens))):
                counter = FlopCounterMode(display=False)
                with counter:
                    run()
                out["work"][modality] = counter.get_total_flops()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    # One batch's rows (tokens) through the first MLP layer of each tower.
    grid = model.visual.grid_size
    shapes = {"images": (batch_size * (grid[0] * grid[1] + 1), model.visual.transformer.resblocks[0].mlp.c_fc),
              "texts": (batch_size * model.context_length, model.transformer.resblocks[0].mlp.c_fc)}
    with torch.inference_mode():
        for modality, (rows, fc) in shapes.items():
            x = torch.randn(rows, fc.in_features)
            layer = torch.nn.Sequential(torch.nn.Linear(fc.in_features, fc.out_features))
            rates = {"fp32": _rate(layer, x, repeats)}
            for name in INT8_ENGINES:
                quantised = torch.nn.Sequential(torch.nn.Linear(fc.in_features, fc.out_features))
                quantised.load_state_dict(layer.state_dict())
                quantize_linear_int8(quantised, name)
                rates[name] = _rate(quantised, x, repeats)
            out["rates"][modality] = rates
    return out


def _rate(layer: Any, x: Any, repeats: int) -> float:
    """Operations per second of ``layer(x)`` (2 per multiply-add), best of ``repeats`` after a warm-up."""
    layer(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        layer(x)
        best = min(best, time.perf_counter() - start)
    first = next(m for m in layer.modules() if hasattr(m, "in_features"))
    return 2 * x.shape[0] * first.in_features * first.out_features / best


def machine_info() -> dict[str, Any]:
    import chromadb
    import open_clip
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags: list[str] = []
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_count": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
        "open_clip": open_clip.__version__, "chromadb": chromadb.__version__,
        "bf16_supported": bool(torch.cpu._is_avx512_bf16_supported()),
        # The flags that decide the kernels, and any cap put on the kernel libraries.
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
        "isa_caps": isa_caps(),
    }


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table for a report made by :func:`main`."""
    m, cfg = report["machine"], report["config"]
    lines = [
        f"mmrag ingest benchmark: {MODEL}, random weights (seed {SEED}), same files, decode+embed+Chroma write",
        f"machine: {m['cpu_count']} CPUs ({m['cpu']}), python {m['python']}, torch {m['torch']}, "
        f"open_clip {m['open_clip']}, chromadb {m['chromadb']}, torch threads {cfg['threads']}",
        f"cpu flags: {' '.join(m.get('cpu_flags', [])) or 'n/a'}; kernel caps: "
        f"{' '.join(f'{k}={v}' for k, v in m.get('isa_caps', {}).items()) or 'none'}",
        f"bf16 supported: {'yes' if m['bf16_supported'] else 'no'}; mmrag chose: {report['mmrag_precision']}; "
        f"mmrag batch {cfg['batch_size']}; warm-up {cfg['warmup']} items per pipeline (untimed)",
    ]
    first = next(iter(report["results"].values()), None)
    for part, measured in ((first or {}).get("mmrag_detail", {}).get("numerics") or {}).items():
        lines.append(f"mmrag {part} tower numerics (probe time, min cosine vs fp32; * chosen"
                     f"{', remembered' if measured.get('cached') else ''}): {measured['line']}")
    for mod in MODALITIES:
        if mod in report["inputs"]:
            lines.append(f"{mod}: {report['inputs'][mod]}")
    if "text_tokens" in report:
        tt = report["text_tokens"]
        lines.append(f"text chunks in CLIP tokens: median {tt['median']:.0f}, "
                     f"{tt['truncated_share']:.0%} cut at {tt['context']}")
    head = f"{'modality':<8} {'items':>5} {'naive it/s':>10} {'mmrag it/s':>10} {'ratio':>6} " \
           f"{'naive peak RSS':>14} {'mmrag peak RSS':>14}  target"
    lines += ["", head, "-" * len(head)]
    for mod, row in report["results"].items():
        ok = "PASS" if row["ratio"] >= TARGET_RATIO else "FAIL"
        lines.append(
            f"{mod:<8} {row['items']:>5} {row['naive_items_per_s']:>10.1f} {row['mmrag_items_per_s']:>10.1f} "
            f"{row['ratio']:>5.2f}x {row['naive_peak_rss_mib']:>10.0f} MiB {row['mmrag_peak_rss_mib']:>10.0f} MiB"
            f"  {ok} (>= {TARGET_RATIO:g}x)"
        )
    lines.append("")
    for mod, row in report["results"].items():
        ag, mm, nv = row["agreement"], row["mmrag_detail"], row["naive_detail"]
        lines.append(
            f"{mod}: agreement naive fp32 vs mmrag cosine min {ag['cosine_min']:.4f} mean {ag['cosine_mean']:.4f} "
            f"(different items: mean {ag['between_items_mean']:.4f}; self-retrieval@1 {ag['self_retrieval_at_1']:.0%} "
            f"of {ag['distinct_items']} distinct)"
        )
        lines.append(
            f"{mod}: mmrag embed {mm['embed_seconds']:.1f}s + write {mm['write_seconds']:.2f}s; "
            f"RSS before timing naive {_mib(nv['rss_before_mib'])} / mmrag {_mib(mm['rss_before_mib'])}; "
            f"CPUs busy naive {nv['cpu_busy']:.2f} / mmrag {mm['cpu_busy']:.2f} of {cfg['threads']}"
        )
    bound = report.get("matmul_bound")
    for mod, row in report["results"].items():
        if not bound:
            break
        rates = bound["rates"][mod]
        best = max(rates, key=rates.get)
        most = rates[best] / bound["work"][mod]
        lines.append(
            f"{mod}: matmul bound: {bound['work'][mod] / 1e9:.1f} GFLOP an item at this machine's fastest matmul "
            f"({best}, {rates[best] / 1e9:.0f} GOP/s; fp32 {rates['fp32'] / 1e9:.0f}) = at most {most:.1f} items/s, "
            f"{most / row['naive_items_per_s']:.2f}x naive, with every other op free")
    busy = [row[f"{p}_detail"]["cpu_busy"] for row in report["results"].values() for p in PIPELINES]
    if busy and min(busy) < 0.85 * cfg["threads"]:
        load = report.get("load_average") or [float("nan")]
        lines.append(f"WARNING: a timed run got only {min(busy):.2f} of {cfg['threads']} CPUs (load average "
                     f"{load[0]:.1f} before the run): other processes competed, so these numbers are noisy; "
                     "rerun on an idle machine")
    return "\n".join(lines)


# -- processes ------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that the weights are random: we know
    spec = json.loads(Path(args.inputs).read_text())
    out = Path(args.result)
    start = time.perf_counter()
    pipe = load_pipeline(args.only, out.parent / f"{args.only}-{args.modality}", threads=args.threads,
                         batch_size=args.batch_size, precision=args.precision)
    load_seconds = time.perf_counter() - start
    stats, vecs = run_pipeline(pipe, args.modality, spec[args.modality], warmup=args.warmup)
    stats["load_seconds"] = load_seconds
    np.save(out.with_suffix(".npy"), vecs)
    out.write_text(json.dumps(stats))
    return 0


def _spawn(args: argparse.Namespace, pipeline: str, modality: str, inputs: Path, workdir: Path) -> dict[str, Any]:
    result = workdir / f"{pipeline}-{modality}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", pipeline, "--modality", modality,
           "--inputs", str(inputs), "--result", str(result), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--precision", args.precision]
    print(f"  {pipeline:<5} {modality:<6} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # Every run measures the numerics afresh (and prints them), never a choice remembered from before.
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MMRAG_NUMERICS_REMEASURE": "1"})
    if proc.returncode != 0:
        print(" failed", file=sys.stderr)
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{pipeline}/{modality} child failed (exit {proc.returncode})")
    stats = json.loads(result.read_text())
    stats["vectors"] = np.load(result.with_suffix(".npy"))
    print(f" {stats['items_per_s']:.1f} items/s ({time.perf_counter() - start:.0f}s with model load)",
          file=sys.stderr)
    return stats


def _prewarm_page_cache(paths: Sequence[str]) -> None:
    # Both pipelines then read the files from memory, so neither pays for cold disk reads.
    for p in set(paths):
        Path(p).read_bytes()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--engine" in argv or any(a.startswith("--engine=") for a in argv):
        # The engines comparison (local vs Ray Data, whole `mmrag ingest` runs) lives beside this.
        from eval.bench import engines

        return engines.main(argv)
    from mmrag import INT8_ENGINES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="--engine ray [...]: compare `mmrag ingest --engine ray` with the local "
                                            "engine instead (see eval/bench/engines.py)")
    parser.add_argument("--images", type=int, default=240, help="images to ingest (real files cycled; 0 skips)")
    parser.add_argument("--texts", type=int, default=300, help="text chunks to ingest (0 skips)")
    parser.add_argument("--image-dir", type=Path, help="a folder of JPEG/PNG files to use instead of the defaults")
    parser.add_argument("--chunk-size", type=int, default=200, help="SentenceChunker size (mmrag's default)")
    parser.add_argument("--chunk-overlap", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=32, help="untimed warm-up items per pipeline")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both pipelines")
    parser.add_argument("--batch-size", type=int, default=32, help="mmrag's CLIP batch size")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", *INT8_ENGINES],
                        help="mmrag precision (auto: measured per tower, see mmrag.numerics)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio or agreement misses its target")
    parser.add_argument("--matmul-bound", action="store_true",
                        help="also measure the matmul rates here and print the speed-up no kernel choice can beat")
    parser.add_argument("--only", choices=PIPELINES, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--modality", choices=MODALITIES, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}.items():
        os.environ.setdefault(key, value)
    if not (args.images or args.texts):
        parser.error("nothing to measure: --images and --texts are both 0")
    if args.only:
        if not (args.modality and args.inputs and args.result):
            parser.error("--only is the child mode; it needs --modality, --inputs and --result")
        return _child(args)

    with tempfile.TemporaryDirectory(prefix="mmrag-bench-") as tmp:
        workdir = Path(tmp)
        spec: dict[str, list[str]] = {}
        described: dict[str, str] = {}
        if args.images:
            spec["images"], described["images"] = find_images(args.images, workdir, args.image_dir)
            _prewarm_page_cache(spec["images"])
        if args.texts:
            spec["texts"], described["texts"] = load_texts(args.texts, args.chunk_size, args.chunk_overlap)
        inputs = workdir / "inputs.json"
        inputs.write_text(json.dumps(spec))
        report: dict[str, Any] = {
            "machine": machine_info(), "inputs": described, "results": {},
            "config": {"threads": args.threads, "batch_size": args.batch_size, "warmup": args.warmup,
                       "precision": args.precision, "model": MODEL, "seed": SEED},
        }
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if "texts" in spec:
            report["text_tokens"] = clip_token_lengths(spec["texts"])
        print("running (each in its own process):", file=sys.stderr)
        for modality, items in spec.items():
            naive = _spawn(args, "naive", modality, inputs, workdir)
            mine = _spawn(args, "mmrag", modality, inputs, workdir)
            report["mmrag_precision"] = mine["precision"]
            report["results"][modality] = {
                "items": len(items),
                "naive_items_per_s": naive["items_per_s"], "mmrag_items_per_s": mine["items_per_s"],
                "ratio": mine["items_per_s"] / naive["items_per_s"],
                "naive_peak_rss_mib": naive["peak_rss_mib"], "mmrag_peak_rss_mib": mine["peak_rss_mib"],
                "agreement": agreement(naive.pop("vectors"), mine.pop("vectors"), items),
                "naive_detail": naive, "mmrag_detail": mine,
            }
        if args.matmul_bound:
            report["matmul_bound"] = matmul_bound(args.threads, args.batch_size)
        if load_before is not None:
            # 1-minute averages, before any child ran and after the last (which includes our own load).
            report["load_average"] = [load_before, os.getloadavg()[0]]
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    missed = [m for m, r in report["results"].items()
              if r["ratio"] < TARGET_RATIO or r["agreement"]["cosine_min"] < 0.98
              or r["mmrag_peak_rss_mib"] > MAX_RSS_RATIO * r["naive_peak_rss_mib"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    import importlib.util

    if importlib.util.find_spec("mmrag") is None:  # a clone without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for eval.bench.engines
    raise SystemExit(main())
