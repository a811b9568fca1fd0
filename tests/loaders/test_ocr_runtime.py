"""The OCR runtime chosen by measurement (mmrag.loaders.ocr_runtime), on the real RapidOCR models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmrag import numerics
from mmrag.loaders import ocr, ocr_runtime
from mmrag.loaders.ocr_runtime import REFERENCE, Runtime, text_agreement


@pytest.fixture
def fresh_cache(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_CACHE_DIR", str(tmp_path / "cache"))


def _probe_text(engine: Any) -> str:
    lines, _ = engine(ocr_runtime.probe_image(), use_cls=False)
    return "\n".join(str(line[1]) for line in lines or ())


def test_text_agreement_is_the_share_of_characters_in_common() -> None:
    assert text_agreement("same text", "same text") == 1.0
    assert text_agreement("", "") == 1.0
    assert text_agreement("abcdefghij" * 10, "abcdefghij" * 9 + "abcdefghiX") == pytest.approx(0.99)
    assert text_agreement("some text", "") == 0.0


@pytest.mark.slow
@pytest.mark.long
def test_the_chosen_runtime_reads_the_probe_as_onnxruntime_does(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ocr.RapidOcrEngine()
    rapid = engine._get()
    choice = engine.runtime
    names = [t.name for t in choice.trials]
    assert names[0] == REFERENCE.label and choice.name in names
    assert {"openvino fp32 b1", "openvino bf16 b1"} <= set(names)  # the wheel is a core dependency
    assert choice.agreement >= numerics.MIN_COSINE
    chosen = next(t for t in choice.trials if t.name == choice.name)
    assert chosen.seconds <= choice.trials[0].seconds  # never slower than onnxruntime on the probe
    monkeypatch.setattr(ocr_runtime, "_openvino", lambda: None)
    reference = _probe_text(ocr.RapidOcrEngine()._get())  # the same engine on onnxruntime
    assert "consistent across all three cohorts" in reference
    assert text_agreement(reference, _probe_text(rapid)) >= ocr_runtime.MIN_AGREEMENT


def test_a_second_engine_reuses_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ocr.RapidOcrEngine()
    first._get()
    timed: list[int] = []
    real = numerics._timed
    monkeypatch.setattr(numerics, "_timed", lambda probe, repeats: timed.append(1) or real(probe, repeats))
    second = ocr.RapidOcrEngine()
    second._get()
    assert timed == [] and second.runtime.cached
    assert second.runtime.name == first.runtime.name


def test_the_measurement_is_kept_per_engine_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that changes the detector's cap or the width steps measures again (the cache key has them)."""
    keys: list[dict[str, Any]] = []

    def recording(names: list[str], **kwargs: Any) -> numerics.Choice:
        keys.append(kwargs["key"])
        return numerics.Choice(names[0], (), cached=True)

    monkeypatch.setattr(ocr_runtime.numerics, "choose", recording)
    monkeypatch.setattr(ocr, "DET_MAX_SIDE", 960)
    ocr.RapidOcrEngine()._get()
    assert len(keys) == 2  # the runtimes, then the recognition batch
    assert all(k["det_max_side"] == 960 and k["rec_width_step"] == ocr.REC_WIDTH_STEP for k in keys), keys


@pytest.mark.slow
@pytest.mark.long
def test_a_runtime_that_cannot_run_here_is_measured_as_unavailable(fresh_cache: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: no such device")

    monkeypatch.setattr(ocr_runtime, "OpenVinoModel", broken)
    engine = ocr.RapidOcrEngine()
    rapid = engine._get()
    notes = {t.name: t.note for t in engine.runtime.trials}
    assert notes["openvino fp32 b1"].startswith("unavailable: RuntimeError")
    assert engine.runtime.name.startswith("onnxruntime")
    assert "consistent across all three cohorts" in _probe_text(rapid)


def test_the_detector_is_capped_and_recogniser_widths_come_in_steps() -> None:
    engine = ocr.RapidOcrEngine()
    rapid = engine._get()
    det_shapes: list[tuple[int, ...]] = []
    rec_shapes: list[tuple[int, ...]] = []

    def spy(model: Any, shapes: list[tuple[int, ...]]) -> Any:
        return lambda batch: shapes.append(batch.shape) or model(batch)

    rapid.text_det.infer = spy(rapid.text_det.infer, det_shapes)
    rapid.text_rec.session = spy(rapid.text_rec.session, rec_shapes)
    page = Image.new("RGB", (1275, 1650), "white")  # a letter page at 150 DPI
    page.paste(ocr_runtime.probe_image(), (100, 200))
    result = engine.read(page)
    assert "consistent across all three cohorts" in result.text
    assert max(det_shapes[0][2:]) <= ocr.DET_MAX_SIDE
    assert rec_shapes and all(shape[3] % ocr.REC_WIDTH_STEP == 0 for shape in rec_shapes)


def test_switching_back_to_onnxruntime_lets_the_compiled_models_go() -> None:
    rapid = ocr.RapidOcrEngine()._build(rec_batch_num=1)
    switch = ocr_runtime.RuntimeSwitch(rapid, 1)
    switch.use(Runtime("openvino", "fp32", 1))
    assert isinstance(rapid.text_rec.session, ocr_runtime.OpenVinoModel)
    switch.use(Runtime("openvino", "bf16", 1))
    assert list(switch._compiled) == ["bf16"]  # one compiled pair at a time
    switch.use(REFERENCE)
    assert switch._compiled == {} and type(rapid.text_rec.session).__name__ == "OrtInferSession"
    out = rapid.text_rec.session(np.zeros((1, 3, 48, 320), dtype=np.float32))
    assert out[0].shape[0] == 1


def test_compile_check_reports_a_crash_it_cannot_catch_in_process() -> None:
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    assert ocr_runtime.compile_check(crash) == "compiling the models killed the process (signal 11)"
    fail = [sys.executable, "-c", "raise RuntimeError('no CPU plugin')"]
    assert ocr_runtime.compile_check(fail) == "compiling the models failed: ['RuntimeError: no CPU plugin']"
    assert ocr_runtime.compile_check([sys.executable, "-c", "pass"]) == ""


@pytest.mark.slow
@pytest.mark.long
def test_openvino_that_cannot_compile_here_is_left_out(fresh_cache: None, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ocr_runtime, "compile_check", lambda: "compiling the models killed the process (signal 11)")
    ocr_runtime._openvino.cache_clear()
    try:
        assert ocr_runtime.candidates() == []
        engine = ocr.RapidOcrEngine()
        rapid = engine._get()
    finally:
        ocr_runtime._openvino.cache_clear()
    assert [t.name for t in engine.runtime.trials][0] == REFERENCE.label
    assert engine.runtime.name.startswith("onnxruntime")
    assert type(rapid.text_rec.session).__name__ == "OrtInferSession"
    assert "consistent across all three cohorts" in _probe_text(rapid)
    assert "OpenVINO is not used for OCR on this machine: compiling the models killed the process" in caplog.text


@pytest.mark.slow
@pytest.mark.long
def test_ocr_reads_under_the_avx2_caps(tmp_path: Path) -> None:
    """Under ONEDNN_MAX_CPU_ISA=AVX2 OpenVINO 2026.4 segfaults compiling on an AVX-512 CPU: OCR must still read."""
    code = ("from mmrag.loaders import ocr, ocr_runtime\n"
            "engine = ocr.RapidOcrEngine()\n"
            "print(engine.read(ocr_runtime.probe_image()).text)\n"
            "print('RUNTIME', engine.runtime.name)\n")
    env = {**os.environ, "MMRAG_CACHE_DIR": str(tmp_path), "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "consistent across all three cohorts" in done.stdout


def test_the_preview_runs_the_full_engines_detector_model() -> None:
    engine = ocr.RapidOcrEngine()
    page = Image.new("RGB", (1275, 1650), "white")
    page.paste(ocr_runtime.probe_image(), (100, 200))
    share, _ = engine.text_share(page)
    assert share > 0.01
    assert engine._preview.text_det.infer is engine._get().text_det.infer  # one compiled detector, not two
