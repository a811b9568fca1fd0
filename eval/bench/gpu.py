#!/usr/bin/env python
"""Embedding throughput on a GPU (fp16) against this machine's CPU path, in one run.

Both sides use mmrag's own embedders exactly as ``mmrag ingest --device ...`` does:
``OpenClipEmbedder`` (ViT-B-32, random seeded weights: speed does not depend on them) for images
and ``SentenceTransformerEmbedder`` (MiniLM from the offline profile) plus CLIP's text tower for
text chunks. Precision is each device's automatic choice (fp16 on the GPU, bf16 or fp32 on the CPU),
and the agreement of the GPU vectors with fp32 on the CPU is printed beside the speed.

Images are decoded and preprocessed on the CPU in both cases (as in an ingest), so on the GPU the
image rate shows where decoding, not the model, becomes the limit.

Without a GPU it says so and exits 0 (nothing to measure); no test depends on a GPU.

Usage::

    .venv/bin/python eval/bench/gpu.py [--images 2048] [--texts 4096] [--cpu-sample 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _images(n: int, workdir: Path) -> list[str]:
    sys.path.insert(0, str(REPO))
    from eval.bench.ingest import find_images

    return find_images(n, workdir)[0]


def _texts(n: int) -> list[str]:
    sys.path.insert(0, str(REPO))
    from eval.bench.ingest import load_texts

    return load_texts(n, 200, 40)[0]


def measure(device: str, images: Sequence[str], texts: Sequence[str], batch: int) -> dict[str, Any]:
    import torch

    from mmrag import ClipSpec, ImageAsset, OpenClipEmbedder, SentenceTransformerEmbedder, offline_minilm_dir

    torch.manual_seed(0)
    clip = OpenClipEmbedder(ClipSpec(model="ViT-B-32", pretrained=None, batch_size=batch, device=device))
    text = SentenceTransformerEmbedder(str(offline_minilm_dir()), device=device, batch_size=max(64, batch))
    assets = [ImageAsset(path=p) for p in images]
    warm = assets[: min(len(assets), batch)]
    list(clip.iter_image_embeddings(warm))
    text.embed_texts(list(texts[:batch]))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    img_vecs = np.stack([v for _, v in sorted(clip.iter_image_embeddings(assets), key=lambda x: x[0])])
    sync()
    t1 = time.perf_counter()
    text_vecs = text.embed_texts(list(texts))
    clip_text = clip.embed_texts(list(texts))
    sync()
    t2 = time.perf_counter()
    return {"device": device, "clip_precision": clip.precision, "text_precision": text.precision,
            "clip_agreement": clip.agreement, "text_agreement": text.agreement,
            "images_per_s": len(assets) / (t1 - t0), "chunks_per_s": len(texts) / (t2 - t1),
            "image_vecs": img_vecs, "text_vecs": text_vecs, "clip_text_vecs": clip_text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--cpu-sample", type=int, default=256, help="items the CPU side embeds (its rate is per item)")
    parser.add_argument("--batch-size", type=int, default=256, help="GPU batch size (the CPU keeps 32)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import tempfile

    import torch

    if not torch.cuda.is_available():
        print("no GPU visible to torch (torch.cuda.is_available() is False): nothing measured")
        return 0
    with tempfile.TemporaryDirectory(prefix="mmrag-gpu-") as tmp:
        images = _images(args.images, Path(tmp))
        texts = _texts(args.texts)
        gpu = measure("cuda", images, texts, args.batch_size)
        n = args.cpu_sample
        cpu = measure("cpu", images[:n], texts[:n], 32)
    # The GPU's vectors against the CPU's for the same items: fp16 must agree with fp32/bf16.
    agree = {
        "images": float((gpu["image_vecs"][:n] * cpu["image_vecs"]).sum(-1).min()),
        "text_model": float((gpu["text_vecs"][:n] * cpu["text_vecs"]).sum(-1).min()),
        "clip_text": float((gpu["clip_text_vecs"][:n] * cpu["clip_text_vecs"]).sum(-1).min()),
    }
    name = torch.cuda.get_device_name(0)
    report = {"gpu": name, "cpu_count": os.cpu_count(), "images": len(images), "texts": len(texts),
              "gpu_rates": {k: gpu[k] for k in ("images_per_s", "chunks_per_s", "clip_precision", "text_precision",
                                                "clip_agreement", "text_agreement")},
              "cpu_rates": {k: cpu[k] for k in ("images_per_s", "chunks_per_s", "clip_precision", "text_precision")},
              "gpu_vs_cpu_min_cosine": agree}
    print(f"GPU {name} ({gpu['clip_precision']} CLIP, {gpu['text_precision']} text; probe cosine vs fp32 "
          f"{gpu['clip_agreement']:.4f} / {gpu['text_agreement']:.4f}) vs this machine's {os.cpu_count()} CPUs "
          f"({cpu['clip_precision']} / {cpu['text_precision']})")
    for key, label in (("images_per_s", "images/s"), ("chunks_per_s", "chunks/s")):
        print(f"{label:<9} GPU {gpu[key]:8.1f}   CPU {cpu[key]:7.1f}   ratio {gpu[key] / cpu[key]:6.1f}x")
    print("GPU vs CPU vectors, min cosine: " + ", ".join(f"{k} {v:.4f}" for k, v in agree.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
