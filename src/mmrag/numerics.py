"""Numerics chosen by measurement: time each candidate on a probe, keep the fastest that agrees.

A CPU flag that says "bf16" does not say that bf16 is fast: with oneDNN capped at AVX2, bf16
weights ran three times *slower* than fp32 on a CPU that has AVX-512 BF16 (../shared/NOTES.md).
So a model's numerics are chosen here by timing, on the machine the model runs on:

1. the probe runs in fp32 (warmed up, then timed): the reference vectors and the time to beat;
2. each candidate in turn converts the model in place, runs the same probe (warmed up, then
   timed), and is compared with the reference, item by item;
3. the model goes back to fp32 (its owner reloads the weights) before the next candidate, so
   only one converted copy ever exists and peak memory stays that of one model;
4. the fastest candidate whose every probe item agrees with fp32 at cosine >= ``MIN_COSINE``
   wins (fp32 itself always qualifies).

The owner (an embedder) supplies three callables; this module knows nothing of CLIP or BERT.
Timings take the best of a few runs: on a shared machine the minimum is the least noisy estimate
of what the code costs, while a mean measures the neighbours.

A choice is remembered per machine (:func:`cache_path`), keyed by the model's weights, the device,
the CPU's model and flags, the kernel-library caps in the environment, torch's version and its
thread count: a second start on the same machine converts without measuring again. Any change to
one of those measures again; ``MMRAG_NUMERICS_REMEASURE=1`` forces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Every probe item must agree with fp32 at least this well (cosine of unit vectors).
MIN_COSINE = 0.99
#: What ``auto`` tries, by device, in this order (fp32 is the reference, always measured).
CPU_CANDIDATES = ("bf16", "int8", "int8-onednn")
GPU_CANDIDATES = ("fp16",)
#: int8 dynamic quantisation, by the torch quantized engine that packs the weights (and so picks the
#: kernels): ``x86`` chooses fbgemm or oneDNN per layer shape, ``onednn`` always oneDNN. Neither wins
#: everywhere: on one 2-core Xeon (ViT-B-32 image tower) oneDNN's probe ran 1.45x faster natively
#: (AMX), and with the kernel libraries capped at AVX2 x86's ran 1.17x faster (a tie at batch 32).
INT8_ENGINES = {"int8": "x86", "int8-onednn": "onednn"}
#: The names a caller may ask for.
KNOWN = ("auto", "fp32", "bf16", "fp16", *INT8_ENGINES)
#: Environment variables that cap the kernel libraries (they change what is fast).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "FBGEMM_ENABLE_INSTRUCTIONS", "MKL_ENABLE_INSTRUCTIONS",
            "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class Trial:
    """One candidate's measurement.

    Attributes:
        name: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        seconds: the best time of the probe (nan when the candidate could not run).
        agreement: the lowest cosine of a probe item against fp32 (nan when it could not run).
        note: why it could not run, or "".
    """

    name: str
    seconds: float
    agreement: float
    note: str = ""

    @property
    def agrees(self) -> bool:
        return not math.isnan(self.agreement) and self.agreement >= MIN_COSINE


@dataclass(frozen=True)
class Choice:
    """What a part of a model runs in, and the measurements it was chosen from."""

    name: str
    trials: tuple[Trial, ...] = field(default_factory=tuple)
    #: True when the measurement was read back from this machine's cache, not taken now.
    cached: bool = False

    @property
    def agreement(self) -> float:
        """The chosen candidate's agreement with fp32 (1.0 for fp32 itself)."""
        return next((t.agreement for t in self.trials if t.name == self.name), 1.0)

    def describe(self) -> str:
        """One line for logs and benchmarks: each candidate's time and agreement, the winner marked."""
        parts = []
        for t in self.trials:
            mark = "*" if t.name == self.name else ""
            if t.note:
                parts.append(f"{t.name}{mark} ({t.note})")
            else:
                parts.append(f"{t.name}{mark} {t.seconds * 1000:.0f} ms agreement {t.agreement:.4f}")
        return ", ".join(parts) or self.name

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.name, "trials": [
            {"name": t.name, "seconds": None if math.isnan(t.seconds) else round(t.seconds, 5),
             "agreement": None if math.isnan(t.agreement) else round(t.agreement, 5), "note": t.note}
            for t in self.trials]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        nan = math.nan
        trials = tuple(Trial(str(t["name"]), nan if t["seconds"] is None else float(t["seconds"]),
                             nan if t["agreement"] is None else float(t["agreement"]), str(t.get("note", "")))
                       for t in data["trials"])
        return cls(str(data["chosen"]), trials, cached=True)


def candidates_for(wanted: str, device: str) -> tuple[str, ...]:
    """The candidates ``wanted`` asks for on ``device`` (fp32 is always the reference).

    Raises:
        ValueError: ``wanted`` is not one of :data:`KNOWN`.
    """
    if wanted not in KNOWN:
        raise ValueError(f"Unknown precision {wanted!r}. Known: {', '.join(KNOWN)}")
    if wanted == "fp32":
        return ()
    if wanted != "auto":
        return (wanted,)
    return CPU_CANDIDATES if device == "cpu" else GPU_CANDIDATES


def choose(candidates: Sequence[str], *, probe: Callable[[], Any], convert: Callable[[str], None],
           restore: Callable[[], None], repeats: int = 2, what: str = "model",
           key: dict[str, Any] | None = None, keep: str | None = None, reference: str = "fp32",
           agreement: Callable[[Any, Any], float] | None = None,
           fingerprint: Callable[[], dict[str, Any]] | None = None) -> Choice:
    """Measure the reference and each candidate on ``probe``; leave the model in the winner's numerics.

    Args:
        candidates: names to try besides the reference, in order (from :func:`candidates_for`).
        probe: runs the model in its current numerics on fixed inputs; returns unit rows (or
            whatever ``agreement`` compares).
        convert: converts the reference model in place to a candidate; raises if it cannot.
        restore: puts the model back in the reference numerics (reloads its weights).
        repeats: timed runs per candidate, after one warm-up run (the first bf16 call builds kernels).
        what: the model's name, for the log line.
        key: what identifies the model (weights, device, part); with it the choice is remembered
            on this machine and a later call with the same key converts without measuring.
        keep: a candidate the caller asked for by name: it wins whenever it agrees, fast or not.
        reference: the name of what the model runs before any conversion (fp32 for a torch model;
            the OCR engine's is onnxruntime's fp32).
        agreement: how alike a candidate's probe output is to the reference's, 0..1, judged
            against :data:`MIN_COSINE` (default: the lowest cosine of the rows).
        fingerprint: what makes this machine's timings its own (default :func:`machine_fingerprint`,
            which includes torch's version and thread count).

    Returns:
        The choice, with every trial. With one explicit candidate (not ``auto``) that disagrees,
        the choice is fp32 and the caller decides whether that is an error.
    """
    cache_key = _cache_key(key, candidates, keep, (fingerprint or machine_fingerprint)()) if key is not None else None
    remembered = _recall(cache_key) if cache_key else None
    if remembered is not None:  # the measurements are remembered; the rule is applied again
        chosen = Choice(_pick(remembered.trials, keep, reference).name, remembered.trials, cached=True)
        if chosen.name != reference:
            convert(chosen.name)
            release_freed_memory()  # the fp32 weights the conversion replaced
        log.info("%s numerics (measured earlier on this machine): %s", what, chosen.describe())
        return chosen
    compare = agreement or _min_cosine
    ref_seconds, ref = _timed(probe, repeats)
    trials = [Trial(reference, ref_seconds, 1.0)]
    state = reference
    for name in candidates:
        if state != reference:
            restore()
            state = reference
        try:
            convert(name)
            state = name
            release_freed_memory()  # the fp32 weights the conversion replaced, before the probe runs
            seconds, out = _timed(probe, repeats)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is a measured "no"
            trials.append(Trial(name, math.nan, math.nan, f"unavailable: {type(exc).__name__}: {exc}"[:200]))
            continue
        trials.append(Trial(name, seconds, compare(ref, out)))
    best = _pick(trials, keep, reference)
    if state != best.name:
        if state != reference:
            restore()
        if best.name != reference:
            convert(best.name)
    release_freed_memory()  # the candidates' models and the weights the last conversion replaced
    choice = Choice(best.name, tuple(trials))
    log.info("%s numerics: %s", what, choice.describe())
    if cache_key:
        _remember(cache_key, choice)
    return choice


def cache_path() -> Path:
    """Where measured choices are kept: ``$MMRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmrag``, else ~/.cache/mmrag."""
    base = os.environ.get("MMRAG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mmrag")
    return Path(base) / "numerics.json"


def machine_fingerprint() -> dict[str, Any]:
    """What makes one machine's timings another's: CPU model and flags, kernel caps, torch, threads."""
    import torch

    return {**cpu_fingerprint(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def remembered(key: dict[str, Any], compute: Callable[[], Any],
               fingerprint: Callable[[], dict[str, Any]] | None = None) -> Any:
    """A JSON value ``compute()`` found once on this machine for ``key``, kept in :func:`cache_path`.

    For what is as costly and as machine-bound as a measurement (whether a runtime can run here
    at all). ``MMRAG_NUMERICS_REMEASURE=1`` computes it again.
    """
    cache_key = _cache_key({"remembered": key}, (), None, (fingerprint or cpu_fingerprint)())
    if not _remeasure():
        entry = _load_cache().get(cache_key)
        if isinstance(entry, dict) and "value" in entry:
            return entry["value"]
    value = compute()
    _write_cache(cache_key, {"value": value})
    return value


def cpu_fingerprint() -> dict[str, Any]:
    """The CPU's model, a hash of its flags, and the kernel-library caps in the environment."""
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux: the processor string is what there is
        pass
    return {"cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ}}


def _cache_key(key: dict[str, Any], candidates: Sequence[str], keep: str | None, machine: dict[str, Any]) -> str:
    blob = json.dumps({"model": key, "candidates": list(candidates), "keep": keep, "machine": machine},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):  # absent, unreadable or torn: measure again
        return {}
    return data if isinstance(data, dict) else {}


def _remeasure() -> bool:
    """``MMRAG_NUMERICS_REMEASURE`` is set: nothing is read back from the cache."""
    return os.environ.get("MMRAG_NUMERICS_REMEASURE", "").lower() in {"1", "true", "yes"}


def _recall(cache_key: str) -> Choice | None:
    if _remeasure():
        return None
    entry = _load_cache().get(cache_key)
    try:
        return Choice.from_dict(entry) if isinstance(entry, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def _remember(cache_key: str, choice: Choice) -> None:
    _write_cache(cache_key, choice.as_dict())


def _write_cache(cache_key: str, entry: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_cache()
        data[cache_key] = entry
        if len(data) > 256:  # bounded: the oldest entries go first (dicts keep insertion order)
            data = dict(list(data.items())[-256:])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".numerics-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home: measure again next time, and say why once
        log.info("numerics cache %s not written (%s)", path, exc)


def _pick(trials: Sequence[Trial], keep: str | None, reference: str = "fp32") -> Trial:
    """The fastest trial that agrees (``keep`` first when it agrees); the reference always qualifies."""
    return min((t for t in trials if t.name == reference or t.agrees), key=lambda t: (t.name != keep, t.seconds))


def _timed(probe: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = probe()  # warm-up: kernel set-up and caches
    best = math.inf
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        out = probe()
        best = min(best, time.perf_counter() - started)
    return best, out


def _min_cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(out, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min())


def probe_pairs(n: int, words: int) -> tuple[list[str], list[str]]:
    """``n`` fixed (question, passage) pairs, passages of ``words`` words: the probe of a model that
    reads two texts together (the offline reader, a cross-encoder)."""
    vocab = "the museum opens at eight and closes at six on weekdays while the cafe stays open later".split()
    questions = [" ".join(vocab[i % 5:i % 5 + 6]) + "?" for i in range(n)]
    passages = [" ".join(vocab[(i + j) % len(vocab)] for j in range(words)) for i in range(n)]
    return questions, passages


def release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc; elsewhere only the collect).

    A model let go during the measurement frees its weights into glibc's heap, which keeps them:
    once one weight-sized block has been freed, glibc raises its mmap threshold above the size of
    most weights (4-9 MB for ViT-B-32), so later ones come from the heap and their free pages stay
    counted in RSS. Measured on one ViT-B-32 (random weights, three reloads): RSS after the choice
    1469 MiB before ``malloc_trim(0)``, 1144 MiB after it; the peak of the measurement 1557 MiB
    without a trim after each conversion, 1514 MiB with it (the fp32 model alone: 1376 MiB).
    """
    import gc

    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim: nothing to hand back
        return None


_LIBC = _glibc()


#: fp32 Linear weights converted to int8 between two hand-backs of freed memory. A hand-back
#: (malloc_trim) costs 0.18 s beside a ViT-B-32, whose blocks hold 28 MB of such weights. Measured
#: there (peak RSS of the numerics measurement; a start with the int8 choice remembered): a hand-back
#: every block 1466 MiB, 8.0 s; every 2nd 1472-1493 MiB, 5.2 s; every 3rd 1491-1507 MiB, 4.6 s; every
#: 4th 1536-1583 MiB, 4.4 s; only at the end 1636 MiB, 3.4 s. The ingest bench's naive text run peaks
#: at 1442 MiB, and mmrag's may be 10% above it (1586). 64 MiB is every 3rd block there; a small model
#: (MiniLM, the offline CLIP) is handed back once, at the end.
TRIM_EVERY_BYTES = 64 * 2**20
#: The quantized engine is process-wide: two conversions at once must not switch it under each other.
_ENGINE_LOCK = threading.Lock()


def is_int8(name: str) -> bool:
    """True for the int8 candidates (:data:`INT8_ENGINES`): those that :func:`quantize_linear_int8` makes."""
    return name in INT8_ENGINES


def quantize_linear_int8(module: Any, name: str = "int8") -> None:
    """int8 dynamic quantisation of every ``nn.Linear`` in ``module``, in place.

    Weights are int8, activations are quantised per batch at run time. ``name`` picks the engine
    that packs the weights (:data:`INT8_ENGINES`); a packed layer keeps its engine's kernels
    whatever the process-wide engine is later, so the switch lasts only for the conversion.

    The blocks of a stack (an ``nn.ModuleList``'s items: CLIP's resblocks, BERT's layers) are
    converted one at a time, and the freed fp32 weights handed back to the OS every
    :data:`TRIM_EVERY_BYTES` of them: converted at once, the freed weights stayed in glibc's heap
    until the end, and ViT-B-32's image tower peaked 200 MB above the fp32 model
    (:func:`release_freed_memory`).

    Raises:
        ValueError: ``name`` is not an int8 candidate, or this torch build lacks its engine.
    """
    import torch

    engine = INT8_ENGINES.get(name)
    if engine is None:
        raise ValueError(f"{name!r} is not an int8 precision ({', '.join(INT8_ENGINES)})")
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"this torch build has no {engine} quantized engine")
    with warnings.catch_warnings(), _ENGINE_LOCK:
        # torch.ao.quantization announces its move to torchao; the eager API still ships in 2.14.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        # Per output channel: per-tensor scales gave cosine 0.92-0.95 against fp32 on MiniLM.
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        try:
            blocks = [b for stack in module.modules() if isinstance(stack, torch.nn.ModuleList) for b in stack]
            freed = 0
            for part in [*blocks, module]:  # the module last: what lies outside every stack
                freed += sum(p.numel() * p.element_size() for m in part.modules() if isinstance(m, torch.nn.Linear)
                             for p in m.parameters(recurse=False))
                quantize_dynamic(part, spec, dtype=torch.qint8, inplace=True)
                if freed >= TRIM_EVERY_BYTES or part is module:
                    release_freed_memory()
                    freed = 0
        finally:
            torch.backends.quantized.engine = previous
