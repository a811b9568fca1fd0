"""Smoke test of eval/bench/ingest.py: both pipelines run, write every item, and agree.

Never asserts times or ratios: they depend on the machine and its load.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "eval" / "bench" / "ingest.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mmrag_bench_ingest", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_synthetic_images_are_decodable_jpegs(bench, tmp_path):
    from PIL import Image

    files, source = bench._synthetic_images(tmp_path, count=2)
    assert len(files) == 2 and "synthetic" in source
    with Image.open(files[0]) as img:
        assert img.format == "JPEG" and img.size == (640, 480)


def test_generated_text_fallback_chunks(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "SCIFACT_DIR", tmp_path / "absent")
    texts, source = bench.load_texts(5, 200, 40)
    assert len(texts) == 5 and all(texts) and source.startswith("generated")


@pytest.mark.slow
@pytest.mark.long  # 19 s: both ingest pipelines with models, as the other bench smokes
def test_both_pipelines_ingest_the_same_items_and_agree(bench, tmp_path):
    import torch

    threads = torch.get_num_threads()
    images, _ = bench.find_images(4, tmp_path / "inputs")
    texts, _ = bench.load_texts(8, 200, 40)
    report = {}
    try:
        pipes = {p: bench.load_pipeline(p, tmp_path / p, threads=threads) for p in bench.PIPELINES}
        for modality, items in (("images", images), ("texts", texts)):
            (naive, naive_vecs), (mine, mine_vecs) = (
                bench.run_pipeline(pipes[p], modality, items, warmup=1) for p in bench.PIPELINES
            )
            assert naive["pipeline"] == "naive" and mine["pipeline"] == "mmrag"
            assert naive["items"] == mine["items"] == len(items)
            assert naive_vecs.shape == mine_vecs.shape == (len(items), 512)
            assert np.isfinite(naive_vecs).all() and np.isfinite(mine_vecs).all()
            for stats in (naive, mine):
                assert stats["seconds"] > 0 and stats["items_per_s"] > 0 and stats["peak_rss_mib"] > 0
            assert naive["precision"] == "fp32"
            # mmrag measured its candidates per tower and says which won (one name, or one per tower).
            chosen = {part: m["chosen"] for part, m in mine["numerics"].items()}
            assert set(chosen) == {"image", "text"} and set(chosen.values()) <= {"fp32", "bf16", "int8", "int8-onednn"}
            assert mine["precision"] in {f"image={chosen['image']},text={chosen['text']}", chosen["image"]}
            agree = bench.agreement(naive_vecs, mine_vecs, items)
            assert agree["cosine_min"] > 0.98
            assert agree["self_retrieval_at_1"] == 1.0
            report[modality] = {
                "items": len(items), "naive_items_per_s": naive["items_per_s"],
                "mmrag_items_per_s": mine["items_per_s"], "ratio": mine["items_per_s"] / naive["items_per_s"],
                "naive_peak_rss_mib": naive["peak_rss_mib"], "mmrag_peak_rss_mib": mine["peak_rss_mib"],
                "agreement": agree, "naive_detail": naive, "mmrag_detail": mine,
            }
    finally:
        torch.set_num_threads(threads)
    text = bench.format_report({
        "machine": bench.machine_info(), "inputs": {"images": "4 test images", "texts": "8 test chunks"},
        "config": {"threads": 1, "batch_size": 32, "warmup": 1}, "mmrag_precision": mine["precision"],
        "results": report, "text_tokens": bench.clip_token_lengths(texts),
    })
    assert "images" in text and "texts" in text and "ratio" in text


@pytest.mark.slow
@pytest.mark.long  # 10 s: a ViT-B-32 load and three matmul timings per tower
def test_matmul_bound_counts_the_towers_work_and_prints_a_ceiling(bench):
    bound = bench.matmul_bound(threads=1, repeats=1)
    # ViT-B-32 at 224 px: 12 blocks of 50 tokens at width 768, about 8.7 GFLOP; the text tower at 77 tokens
    # about 5.8. The attention's in-projections must be counted (nn.MultiheadAttention's fast path is not).
    assert 8.0e9 < bound["work"]["images"] < 9.5e9 and 5.0e9 < bound["work"]["texts"] < 6.5e9, bound["work"]
    assert set(bound["rates"]["images"]) == {"fp32", "int8", "int8-onednn"}
    assert all(rate > 0 for rates in bound["rates"].values() for rate in rates.values())
    lines = bench.format_report({
        "machine": bench.machine_info(), "inputs": {}, "config": {"threads": 1, "batch_size": 32, "warmup": 1},
        "mmrag_precision": "int8", "matmul_bound": bound,
        "results": {m: {"items": 1, "mmrag_items_per_s": 1.0, "ratio": 1.0, "naive_peak_rss_mib": 1.0,
                        "mmrag_peak_rss_mib": 1.0, "naive_items_per_s": 1.0,
                        "agreement": {"cosine_min": 1.0, "cosine_mean": 1.0, "between_items_mean": 0.5,
                                      "self_retrieval_at_1": 1.0, "distinct_items": 1},
                        "naive_detail": {"rss_before_mib": 1.0, "cpu_busy": 1.0},
                        "mmrag_detail": {"embed_seconds": 1.0, "write_seconds": 0.1, "rss_before_mib": 1.0,
                                         "cpu_busy": 1.0}} for m in ("images", "texts")},
    }).splitlines()
    images = next(line for line in lines if line.startswith("images: matmul bound"))
    best = max(bound["rates"]["images"].values())
    assert f"at most {best / bound['work']['images']:.1f} items/s" in images, images
