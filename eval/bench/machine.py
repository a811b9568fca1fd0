"""The machine a figure was measured on: CPU model, cores and the flags that decide the numerics.

Every speed figure is printed beside this (CPUs differ between sessions: some have AVX-512 BF16
and AMX, some only AVX2).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: The variables that cap the kernel libraries (../shared/NOTES.md: they emulate an AVX2-only CPU).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "FBGEMM_ENABLE_INSTRUCTIONS", "MKL_ENABLE_INSTRUCTIONS")
#: The flags that decide which kernels (and so which numerics) are fast.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> dict[str, Any]:
    """``{"model", "cores", "flags"}`` of this machine (flags: those of :data:`FLAGS` it has)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def cpu_line() -> str:
    """:func:`cpu` on one line, for a report's header."""
    info = cpu()
    return f"{info['model']}; {info['cores']} CPUs; {' '.join(info['flags']) or 'no AVX2'}"


def isa_caps() -> dict[str, str]:
    """The :data:`ISA_CAPS` set in this environment (printed beside a figure measured under them)."""
    return {k: v for k, v in os.environ.items() if k in ISA_CAPS}
