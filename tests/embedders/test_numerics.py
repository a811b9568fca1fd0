"""Numerics chosen by measurement (mmrag.numerics): the fastest candidate that agrees with fp32.

The choice logic runs on a scripted model (its times and vectors are set by the test), so every
branch is exercised on any CPU; the real embedders are then checked to measure, convert, agree
and remember their choice.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from mmrag import numerics
from mmrag.config import Settings
from mmrag.embedders.openclip import ClipSpec, OpenClipEmbedder, resolve_device
from mmrag.embedders.sentence import SentenceTransformerEmbedder, offline_minilm_dir
from mmrag.errors import ModelUnavailableError
from mmrag.registry import resolve_models

REF = np.eye(3, 4, dtype=np.float32)


class Scripted:
    """A model whose each numerics runs in a set time and gives a set rotation of the reference."""

    def __init__(self, seconds: dict[str, float], cosine: dict[str, float], broken: tuple[str, ...] = ()) -> None:
        self.seconds, self.cosine, self.broken = seconds, cosine, broken
        self.state, self.log = "fp32", []
        self.clock = 0.0

    def probe(self) -> np.ndarray:
        self.clock += self.seconds[self.state]
        c = self.cosine.get(self.state, 1.0)
        out = REF * c + np.roll(REF, 1, axis=1) * math.sqrt(max(0.0, 1 - c * c))
        return out

    def convert(self, name: str) -> None:
        assert self.state == "fp32", "a candidate must start from fp32 weights"
        self.log.append(f"convert {name}")
        if name in self.broken:
            raise RuntimeError(f"no {name} kernels here")
        self.state = name

    def restore(self) -> None:
        self.log.append("restore")
        self.state = "fp32"


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[Scripted]:
    """numerics times with perf_counter: drive it from the scripted model's own clock."""
    models: list[Scripted] = []
    monkeypatch.setattr(numerics.time, "perf_counter", lambda: models[-1].clock if models else 0.0)
    return models


def _choose(model: Scripted, candidates: tuple[str, ...] = ("bf16", "int8"), **kw: Any) -> numerics.Choice:
    return numerics.choose(candidates, probe=model.probe, convert=model.convert, restore=model.restore, **kw)


def test_the_fastest_candidate_that_agrees_wins_and_the_model_is_left_in_it(fake_clock: list[Scripted]) -> None:
    fake_clock.append(m := Scripted({"fp32": 1.0, "bf16": 0.3, "int8": 0.5}, {"bf16": 0.999, "int8": 0.995}))
    choice = _choose(m)
    assert choice.name == "bf16" and m.state == "bf16"
    assert [(t.name, round(t.seconds, 6)) for t in choice.trials] == [("fp32", 1.0), ("bf16", 0.3), ("int8", 0.5)]
    assert m.log == ["convert bf16", "restore", "convert int8", "restore", "convert bf16"]


def test_a_flag_is_not_a_measurement_slow_bf16_loses_to_fp32(fake_clock: list[Scripted]) -> None:
    """The AVX2-capped case of issue 26: bf16 is there, agrees, and runs three times slower."""
    fake_clock.append(m := Scripted({"fp32": 1.0, "bf16": 3.0, "int8": 1.4}, {"bf16": 0.9999, "int8": 0.999}))
    choice = _choose(m)
    assert choice.name == "fp32" and m.state == "fp32" and m.log[-1] == "restore"


def test_a_fast_candidate_that_disagrees_is_never_chosen(fake_clock: list[Scripted]) -> None:
    fake_clock.append(m := Scripted({"fp32": 1.0, "bf16": 0.8, "int8": 0.2}, {"bf16": 0.999, "int8": 0.975}))
    choice = _choose(m)
    assert choice.name == "bf16" and not dict((t.name, t.agrees) for t in choice.trials)["int8"]
    assert "int8 200 ms agreement 0.9750" in choice.describe() and "bf16*" in choice.describe()


def test_a_candidate_that_cannot_run_is_recorded_and_skipped(fake_clock: list[Scripted]) -> None:
    fake_clock.append(m := Scripted({"fp32": 1.0, "bf16": 0.5, "int8": 0.1}, {"bf16": 0.999}, broken=("int8",)))
    choice = _choose(m)
    assert choice.name == "bf16" and m.state == "bf16"
    assert "int8 (unavailable: RuntimeError: no int8 kernels here)" in choice.describe()


@pytest.mark.long  # 14 s: two CLIP measurements
def test_a_choice_is_remembered_per_machine_and_measured_again_when_the_machine_changes(
        fake_clock: list[Scripted], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path))
    key = {"model": "m", "weights": "w"}
    fake_clock.append(m := Scripted({"fp32": 1.0, "bf16": 0.3, "int8": 0.5}, {"bf16": 0.999, "int8": 0.995}))
    first = _choose(m, key=key)
    assert not first.cached and json.loads((tmp_path / "numerics.json").read_text())
    fake_clock.append(m2 := Scripted({"fp32": 1.0, "bf16": 0.3, "int8": 0.5}, {"bf16": 0.999, "int8": 0.995}))
    again = _choose(m2, key=key)
    assert again.cached and again.name == "bf16" and m2.log == ["convert bf16"] and m2.clock == 0.0  # not probed
    # The kernel libraries capped at AVX2 are another machine: measure again.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    fake_clock.append(m3 := Scripted({"fp32": 1.0, "bf16": 3.0, "int8": 0.5}, {"bf16": 0.999, "int8": 0.995}))
    capped = _choose(m3, key=key)
    assert not capped.cached and capped.name == "int8"
    # So are other weights; and MMRAG_NUMERICS_REMEASURE=1 measures regardless.
    fake_clock.append(m4 := Scripted({"fp32": 1.0, "bf16": 3.0, "int8": 0.5}, {"bf16": 0.999, "int8": 0.995}))
    assert not _choose(m4, key={**key, "weights": "other"}).cached
    monkeypatch.setenv("MMRAG_NUMERICS_REMEASURE", "1")
    fake_clock.append(m5 := Scripted({"fp32": 1.0, "bf16": 3.0, "int8": 0.5}, {"bf16": 0.999, "int8": 0.995}))
    assert not _choose(m5, key=key).cached


def test_a_torn_cache_file_means_measure_again(fake_clock: list[Scripted], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path))
    (tmp_path / "numerics.json").write_text('{"abc": {"chosen": ')
    fake_clock.append(m := Scripted({"fp32": 1.0, "bf16": 0.3}, {"bf16": 0.999}))
    assert _choose(m, ("bf16",), key={"model": "m"}).name == "bf16"
    assert json.loads((tmp_path / "numerics.json").read_text())  # rewritten whole


def test_unknown_precision_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="Known: auto, fp32, bf16, fp16, int8, int8-onednn"):
        numerics.candidates_for("int4", "cpu")
    assert numerics.candidates_for("auto", "cpu") == ("bf16", "int8", "int8-onednn")
    assert numerics.candidates_for("auto", "gpu") == ("fp16",) and numerics.candidates_for("fp32", "cpu") == ()


# -- the real embedders ------------------------------------------------------------------------------
def _spec(precision: str) -> ClipSpec:
    spec = resolve_models(Settings(profile="offline")).clip
    return ClipSpec(spec.model, spec.pretrained, spec.config_dir, precision=precision)


def test_clip_auto_measures_each_tower_and_its_vectors_agree_with_fp32(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Any) -> None:
    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path))
    ref = OpenClipEmbedder(_spec("fp32"))
    # Each candidate starts from a reload; the model before it must be gone, the first one included.
    # __init__ once kept the first fp32 model in a local name while its frame ran the measurement:
    # every reload then held two models (peak RSS of the measurement 2070 MiB, 1557 MiB without the local).
    seen = _track_models(monkeypatch, OpenClipEmbedder, "_load_model")
    emb = OpenClipEmbedder(_spec("auto"))
    assert len(seen) >= 3, seen  # the first load, then a reload per candidate after the first
    assert seen == [f"load {i + 1} with 0 earlier alive" for i in range(len(seen))]
    for part in ("image", "text"):
        names = [t.name for t in emb.numerics[part].trials]
        assert names == ["fp32", "bf16", "int8", "int8-onednn"], names
        assert all(t.seconds > 0 or t.note for t in emb.numerics[part].trials)
    assert emb.identity()["precision"] == emb.precision and emb.agreement >= numerics.MIN_COSINE
    texts = ["a red circle", "a blue square on a white background", "quarterly revenue grew four percent"]
    assert (ref.embed_texts(texts) * emb.embed_texts(texts)).sum(-1).min() >= 0.99
    import torch

    pixels = torch.rand(3, 3, emb.image_size, emb.image_size, generator=torch.Generator().manual_seed(1))
    assert (ref.embed_pixels(pixels) * emb.embed_pixels(pixels)).sum(-1).min() >= 0.99
    # Started again on the same machine: the same choice, read back, not measured.
    again = OpenClipEmbedder(_spec("auto"))
    assert again.precision == emb.precision and all(c.cached for c in again.numerics.values())


@pytest.mark.parametrize("name", ["int8", "int8-onednn"])
def test_clip_int8_quantises_both_towers_attention_too(name: str) -> None:
    emb = OpenClipEmbedder(_spec(name))
    assert emb.numerics["text"].name == emb.numerics["image"].name == name
    for blocks in (emb._model.transformer.resblocks, emb._model.visual.transformer.resblocks):
        block = blocks[0]
        assert "quantized.dynamic" in type(block.mmrag_qkv).__module__, type(block.mmrag_qkv)
        assert "quantized.dynamic" in type(block.mmrag_out).__module__ and "quantized.dynamic" in type(block.mlp.c_fc).__module__
        # The attention's own fp32 copies are let go: kept, they stay resident beside the int8 layers.
        assert block.attn.in_proj_weight.numel() == block.attn.out_proj.weight.numel() == 0


def test_quantize_linear_int8_packs_for_the_named_engine_and_leaves_the_process_engine_alone() -> None:
    import copy

    import torch

    before = torch.backends.quantized.engine
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32))
    layers = {}
    for name in numerics.INT8_ENGINES:
        layers[name] = copy.deepcopy(layer)
        numerics.quantize_linear_int8(layers[name], name)
        assert torch.backends.quantized.engine == before
    x = torch.randn(5, 64)
    with torch.inference_mode():
        a, b = (layers[n](x) for n in ("int8", "int8-onednn"))
    assert torch.allclose(a, b, atol=0.1), (a - b).abs().max()  # same weights, two kernel libraries
    with pytest.raises(ValueError, match="'bf16' is not an int8 precision"):
        numerics.quantize_linear_int8(torch.nn.Linear(4, 4), "bf16")


def test_int8_conversion_hands_memory_back_by_the_bytes_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TRIM_EVERY_BYTES of fp32 Linear weights converted, and once at the end; never per layer."""
    import torch

    trims: list[int] = []
    monkeypatch.setattr(numerics, "release_freed_memory", lambda: trims.append(sum(
        isinstance(m, torch.nn.Linear) for m in model.modules())))  # fp32 layers left at each hand-back
    block_bytes = (64 * 64 + 64) * 4
    monkeypatch.setattr(numerics, "TRIM_EVERY_BYTES", 2 * block_bytes)
    blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(64, 64)) for _ in range(5))
    model = torch.nn.Sequential(blocks, torch.nn.Linear(64, 2))
    numerics.quantize_linear_int8(model)
    assert trims == [4, 2, 0], trims  # after blocks 2 and 4, then the rest (block 5 and the head) at the end


def test_clip_paths_are_open_clips_own_with_less_work() -> None:
    """Each tower's last block computes its pooled token only (the class token; each text's end-of-text
    token, at its own position in a padded batch), the attention runs without nn.MultiheadAttention, and
    text batches are cut to their longest: the vectors are open_clip's own (fp32), to rounding."""
    import torch

    emb = OpenClipEmbedder(_spec("fp32"))
    assert emb._plain_vit and emb._plain_causal_text
    pixels = torch.rand(3, 3, emb.image_size, emb.image_size, generator=torch.Generator().manual_seed(2))
    tokens = emb._tokenizer(["a cat", "a red circle next to a blue square on a white table", "",
                             " ".join(["word"] * 100)])  # short, longer, empty, cut at the context length
    with torch.inference_mode():
        ours, theirs = emb._encode_pixels(pixels), emb._model.encode_image(pixels)
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()
        ours, theirs = emb._encode_text_tokens(tokens), emb._model.encode_text(tokens)
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()
        short = emb._encode_text_tokens(tokens[:3])  # a batch cut to its longest text, not to 77 tokens
        assert torch.allclose(short, theirs[:3], atol=1e-5, rtol=1e-4), (short - theirs[:3]).abs().max()


@pytest.mark.long  # 12 s: a CLIP measurement of its own
def test_an_explicit_precision_that_disagrees_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numerics, "MIN_COSINE", 1.01)  # nothing agrees that well
    with pytest.raises(ModelUnavailableError, match="fp16 disagrees with fp32"):
        OpenClipEmbedder(_spec("fp16"))
    with pytest.raises(ModelUnavailableError, match="fp16 disagrees"):
        SentenceTransformerEmbedder(str(offline_minilm_dir()), precision="fp16")
    emb = OpenClipEmbedder(_spec("auto"))  # under auto: fp32, measured and reloaded
    assert emb.precision == "fp32"
    vec = emb.embed_texts(["a red circle"])
    assert np.isfinite(vec).all() and abs(np.linalg.norm(vec) - 1) < 1e-4


def test_fp16_is_kept_when_it_agrees_and_recorded_in_the_identity() -> None:
    ref = OpenClipEmbedder(_spec("fp32"))
    low = OpenClipEmbedder(_spec("fp16"))
    assert low.precision == "fp16" and 0.99 <= low.agreement <= 1.0 + 1e-6
    assert ref.precision == "fp32" and ref.agreement == 1.0 and not ref.numerics
    texts = ["a red circle", "a blue square on a white background"]
    assert (ref.embed_texts(texts) * low.embed_texts(texts)).sum(-1).min() > 0.99
    assert low.identity()["precision"] == "fp16"


def test_the_text_model_measures_the_same_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import sentence_transformers

    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path))
    folder = str(offline_minilm_dir())
    seen = _track_models(monkeypatch, sentence_transformers, "SentenceTransformer")
    emb = SentenceTransformerEmbedder(folder)
    # One model at a time, as for CLIP above.
    assert len(seen) >= 3 and seen == [f"load {i + 1} with 0 earlier alive" for i in range(len(seen))], seen
    assert [t.name for t in emb.numerics.trials] == ["fp32", "bf16", "int8", "int8-onednn"]
    assert emb.precision == emb.numerics.name and emb.agreement >= numerics.MIN_COSINE
    ref = SentenceTransformerEmbedder(folder, precision="fp32")
    texts = ["What is the boiling point of water?", "Revenue grew four percent."]
    assert (ref.embed_texts(texts) * emb.embed_texts(texts)).sum(-1).min() >= 0.99


def test_auto_device_is_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


# -- memory: one model at a time (issue 26: peak RSS within 10% of the naive path) -------------------
def _track_models(monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str) -> list[str]:
    """Wrap ``owner.attr`` (a model loader); before each load, record which earlier models are still alive."""
    import weakref

    loaded: list[weakref.ref[Any]] = []
    seen: list[str] = []
    load = getattr(owner, attr)

    def tracked(*args: Any, **kwargs: Any) -> Any:
        alive = sum(ref() is not None for ref in loaded)
        seen.append(f"load {len(loaded) + 1} with {alive} earlier alive")
        model = load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(owner, attr, tracked)
    return seen


_HEAP_SCRIPT = """
import ctypes, sys
from mmrag import numerics
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
# Freeing one 16 MB block raises glibc's mmap threshold, so later 4 MB blocks come from the heap
# (as a model's weights do after its first one is freed); 256 KB live blocks between them pin it.
libc.free(libc.malloc(16 << 20))
blocks, pins = [], []
for _ in range(64):
    blocks.append(libc.malloc(4 << 20))
    ctypes.memset(blocks[-1], 1, 4 << 20)
    pins.append(libc.malloc(256 << 10))
start = rss_mib()
for block in blocks:
    libc.free(block)
kept = rss_mib()
numerics.release_freed_memory()
print(start, kept, rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()),
                    reason="glibc only: other C libraries have no malloc_trim")
def test_freed_weights_go_back_to_the_os() -> None:
    """Freed weight-sized blocks stay in glibc's heap, and in RSS, until release_freed_memory.

    A fresh process, so the heap's state is this test's own and not what earlier tests left.
    """
    out = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    start, kept, released = map(float, out.stdout.split())
    assert start - kept < 64, (start, kept)  # freed, yet still resident: what the measurement left
    assert kept - released > 192, (start, kept, released)  # 256 MB freed: most of it handed back
