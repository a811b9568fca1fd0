"""The low-precision choice (bf16 on a CPU that has it, fp16 on a GPU) and its agreement probe.

fp16 runs on a CPU too (slowly), so the probe's logic is exercised here without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmrag.config import Settings
from mmrag.embedders import openclip, sentence
from mmrag.embedders.openclip import ClipSpec, OpenClipEmbedder, resolve_device
from mmrag.embedders.sentence import SentenceTransformerEmbedder, offline_minilm_dir
from mmrag.errors import ModelUnavailableError
from mmrag.registry import resolve_models


def _spec(precision: str) -> ClipSpec:
    spec = resolve_models(Settings(profile="offline")).clip
    return ClipSpec(spec.model, spec.pretrained, spec.config_dir, precision=precision)


def test_fp16_is_kept_when_it_agrees_with_fp32_and_its_vectors_match() -> None:
    ref = OpenClipEmbedder(_spec("fp32"))
    low = OpenClipEmbedder(_spec("fp16"))
    assert low.precision == "fp16" and 0.99 <= low.agreement <= 1.0 + 1e-6
    assert ref.precision == "fp32" and ref.agreement == 1.0
    texts = ["a red circle", "a blue square on a white background"]
    cos = (ref.embed_texts(texts) * low.embed_texts(texts)).sum(-1)
    assert cos.min() > 0.99
    assert low.identity()["precision"] == "fp16"


def test_a_low_precision_that_disagrees_is_dropped_under_auto_and_refused_when_asked_for(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(openclip, "BF16_MIN_COSINE", 1.01)  # nothing agrees that well
    with pytest.raises(ModelUnavailableError, match="fp16 disagrees with fp32"):
        OpenClipEmbedder(_spec("fp16"))
    # Under auto on a CPU the candidate is bf16, and only where the CPU has it natively.
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    emb = OpenClipEmbedder(_spec("auto"))
    assert emb.precision == "fp32" and emb.agreement < 1.01  # probed, disagreed, reloaded in fp32
    vec = emb.embed_texts(["a red circle"])
    assert np.isfinite(vec).all() and abs(np.linalg.norm(vec) - 1) < 1e-4


def test_the_text_model_probes_fp16_the_same_way(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder = str(offline_minilm_dir())
    low = SentenceTransformerEmbedder(folder, precision="fp16")
    assert low.precision == "fp16" and low.agreement >= 0.99
    monkeypatch.setattr(sentence, "BF16_MIN_COSINE", 1.01)
    with pytest.raises(ModelUnavailableError, match="fp16 disagrees"):
        SentenceTransformerEmbedder(folder, precision="fp16")


def test_auto_device_is_the_cpu_without_a_gpu(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
