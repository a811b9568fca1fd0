"""Which runtime runs the OCR models, chosen by timing them on the machine at first use.

RapidOCR runs its PP-OCRv4 models on onnxruntime. The same ONNX files also run on OpenVINO
(its wheel installs from the registry), in fp32 or, where the CPU has the instructions, in bf16;
which of these is fastest depends on the CPU, and so does the recogniser's best batch size
(onnxruntime was slower at 6 lines a call than at 1, OpenVINO faster). So nothing here is chosen
from a CPU flag: :func:`choose_runtime` reads one fixed probe (a rendered picture of ten lines of
text) with each candidate, through the engine's own detection and recognition, and keeps the
fastest whose text agrees with onnxruntime's fp32 reading (:mod:`mmrag.numerics`'s rule: at least
0.99, here the share of characters that match). The choice is remembered per machine, keyed by
the CPU, the kernel caps in the environment, the runtimes' versions and the thread count.

Measured on the 2-core Xeon with AVX-512 BF16 and AMX (one thread, 8 scanned abstracts at 150
DPI, recogniser widths in 64-px steps): onnxruntime 2.6 s a page, OpenVINO fp32 1.5 s, OpenVINO
bf16 0.7 s, character error 0.05-0.07% for each. OpenVINO's threads are not pinned to cores: it
pinned each process's one thread to core 0, so two OCR processes ran at the speed of one.
"""

from __future__ import annotations

import difflib
import functools
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmrag import numerics

log = logging.getLogger(__name__)

#: Recognition lines per call, tried for each runtime (each batch is padded to its widest line;
#: RapidOCR sorts lines by width first, so neighbours in a batch are of like width).
REC_BATCHES = (1, 6)
#: Seconds the child process that checks OpenVINO may take (it compiles four models).
CHECK_SECONDS = 120
#: What a probe's text must share with the reference reading (characters, difflib's ratio).
MIN_AGREEMENT = numerics.MIN_COSINE
#: The probe: a page's worth of full-width lines and one short one, as a page has (the recogniser's
#: cost grows with a line's width, and a batch pads its lines to the widest).
PROBE_LINES = (
    "Measured on the machine it runs on, and not read from a flag,",
    "the quick brown fox jumps over the lazy dog 0123456789 times.",
    "Results were consistent across all three cohorts (p < 0.05),",
    "Table 2 gives the median latency per page, in seconds, for all",
    "Retrieval quality is kept when pages are scanned at 150 DPI,",
    "and the spaces between words are what keyword search needs.",
    "Invoice no. 2026-0417, due 31 March, total EUR 1,250.00 net;",
    "every probe line must read the same under each candidate.",
    "See section 4.2.",
)


@dataclass(frozen=True)
class Runtime:
    """One way to run the OCR models: the runtime, its precision and the recogniser's batch."""

    name: str  # "onnxruntime" or "openvino"
    precision: str  # "fp32" or "bf16"
    rec_batch: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision} b{self.rec_batch}"


#: What RapidOCR runs out of the box, the reference every candidate is compared with. One line
#: per call: on onnxruntime that was the fastest on the 2-core Xeon (a 150-DPI scanned abstract's
#: recognition 6.8 s against 14.9 s at 6).
REFERENCE = Runtime("onnxruntime", "fp32", 1)


def candidates() -> list[Runtime]:
    """The runtimes this installation can try besides :data:`REFERENCE`, at its batch size."""
    if _openvino() is None:
        return []
    return [Runtime("openvino", precision, REFERENCE.rec_batch) for precision in ("fp32", "bf16")]


@functools.lru_cache(maxsize=1)
def _openvino() -> Any:
    """The openvino module, when it is installed and can compile the OCR models on this machine."""
    try:
        import openvino
    except ImportError:  # optional: without it, onnxruntime runs the models
        return None
    problem = numerics.remembered({"check": "openvino compiles the OCR models", **_versions()}, compile_check)
    if problem:
        log.warning("OpenVINO is not used for OCR on this machine: %s; onnxruntime runs the models", problem)
        return None
    return openvino


def compile_check(command: Sequence[str] | None = None) -> str:
    """Compile and run both OCR models on OpenVINO, fp32 and bf16, in a child process.

    A crash there cannot be caught in this process: with ``ONEDNN_MAX_CPU_ISA=AVX2`` on a CPU
    that has AVX-512 (the AVX2 emulation of ../shared/NOTES.md), OpenVINO 2026.4 dies of a
    segmentation fault while compiling. So the first use on a machine asks a child first.

    Returns:
        ``""`` when it ran; else why not, for the log.
    """
    command = list(command or [sys.executable, "-c", "from mmrag.loaders.ocr_runtime import _compile_all; _compile_all()"])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        return f"compiling the models took over {CHECK_SECONDS} s"
    except OSError as exc:
        return f"the check could not start ({exc})"
    if done.returncode < 0:
        return f"compiling the models killed the process (signal {-done.returncode})"
    if done.returncode:
        return f"compiling the models failed: {(done.stderr or '').strip().splitlines()[-1:] or done.returncode}"
    return ""


def _compile_all() -> None:
    """What :func:`compile_check`'s child runs."""
    import numpy as np

    det, rec = model_paths()
    for precision in ("fp32", "bf16"):
        OpenVinoModel(det, precision, 1)(np.zeros((1, 3, 64, 64), dtype=np.float32))
        OpenVinoModel(rec, precision, 1)(np.zeros((1, 3, 48, 64), dtype=np.float32))


class OpenVinoModel:
    """An ONNX model compiled by OpenVINO, called the way RapidOCR calls its onnxruntime sessions.

    ``model(batch)`` returns the outputs as a list of arrays. Each thread gets its own infer
    request (an infer request runs one call at a time; the compiled model is shared).
    """

    def __init__(self, path: Path, precision: str, threads: int) -> None:
        import openvino as ov

        hint = "bf16" if precision == "bf16" else "f32"
        self._model = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                 "INFERENCE_PRECISION_HINT": hint,
                                                                 "ENABLE_CPU_PINNING": False})
        self._outputs = list(self._model.outputs)
        self._local = threading.local()

    def __call__(self, batch: Any) -> list[Any]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._model.create_infer_request()
        result = request.infer([batch])
        return [result[output] for output in self._outputs]


def model_paths() -> tuple[Path, Path]:
    """The detection and recognition ONNX files inside the rapidocr wheel."""
    import rapidocr_onnxruntime

    folder = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return folder / "ch_PP-OCRv4_det_infer.onnx", folder / "ch_PP-OCRv4_rec_infer.onnx"


class RuntimeSwitch:
    """Puts a RapidOCR engine's detection and recognition on one :class:`Runtime` or another."""

    def __init__(self, engine: Any, threads: int) -> None:
        self.engine = engine
        self.threads = threads
        self._onnxruntime = (engine.text_det.infer, engine.text_rec.session)
        self._compiled: dict[str, tuple[OpenVinoModel, OpenVinoModel]] = {}

    def use(self, runtime: Runtime) -> None:
        if runtime.name == "openvino":
            if runtime.precision not in self._compiled:
                det, rec = model_paths()
                self._compiled = {runtime.precision: (OpenVinoModel(det, runtime.precision, self.threads),
                                                      OpenVinoModel(rec, runtime.precision, self.threads))}
            self.engine.text_det.infer, self.engine.text_rec.session = self._compiled[runtime.precision]
        else:
            self.engine.text_det.infer, self.engine.text_rec.session = self._onnxruntime
            self._compiled = {}  # one compiled pair at a time: memory stays that of one runtime
        self.engine.text_rec.rec_batch_num = runtime.rec_batch


def choose_runtime(engine: Any, threads: int, setup: Mapping[str, Any] | None = None) -> numerics.Choice:
    """Time each candidate on the probe and leave ``engine`` on the fastest that agrees.

    Two measurements: the runtimes at the reference's batch size, then the winner's batch sizes
    (:data:`REC_BATCHES`), each against the winner as it stood. Each is remembered on this machine.

    Args:
        engine: a ``rapidocr_onnxruntime.RapidOCR`` built with ``threads`` intra-op threads.
        threads: the threads each model may use.
        setup: what the caller did to the engine that changes its speed (the detector's cap, the
            recogniser's width steps): part of the cache key, so a release that changes them
            measures again instead of reusing a measurement of the old set-up.

    Returns:
        The choice: the other runtimes' trials, then the winner's at each batch size (``describe()``
        for a log line).
    """
    switch = RuntimeSwitch(engine, threads)
    image = probe_image()

    def probe() -> str:
        lines, _ = engine(image, use_cls=False)
        return "\n".join(str(line[1]) for line in lines or ())

    def measure(options: list[Runtime], reference: Runtime, what: str) -> numerics.Choice:
        by_label = {r.label: r for r in options}
        key = {"ocr": "PP-OCRv4", "threads": threads, "reference": reference.label, **dict(setup or {}), **_versions()}
        return numerics.choose(list(by_label), probe=probe, convert=lambda label: switch.use(by_label[label]),
                               restore=lambda: switch.use(reference), what=what, key=key, repeats=1,
                               reference=reference.label, agreement=text_agreement,
                               fingerprint=numerics.cpu_fingerprint)

    runtimes = measure(candidates(), REFERENCE, "OCR runtime")
    chosen = next((r for r in candidates() if r.label == runtimes.name), REFERENCE)
    batches = [Runtime(chosen.name, chosen.precision, b) for b in REC_BATCHES if b != chosen.rec_batch]
    switch.use(chosen)
    batch = measure(batches, chosen, "OCR recognition batch")
    others = tuple(t for t in runtimes.trials if t.name != chosen.label)  # the winner as the batch run measured it
    return numerics.Choice(batch.name, others + batch.trials, cached=runtimes.cached and batch.cached)


def text_agreement(reference: str, text: str) -> float:
    """The share of characters two readings have in common (1.0 for the same text)."""
    if not reference and not text:
        return 1.0
    return difflib.SequenceMatcher(None, reference, text, autojunk=False).ratio()


@functools.lru_cache(maxsize=1)
def probe_image() -> Any:
    """The probe: :data:`PROBE_LINES` in Pillow's own font, black on white (fixed, so timings compare)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=26)
    step = 40
    image = Image.new("RGB", (1000, step * len(PROBE_LINES) + 40), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(PROBE_LINES):
        draw.text((24, 20 + i * step), line, fill="black", font=font)
    return image


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("rapidocr-onnxruntime", "onnxruntime", "openvino"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found
