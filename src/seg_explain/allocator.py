"""Keep glibc from handing tensor buffers back to the kernel after every network pass.

Explainers run the same network hundreds of times. Each pass allocates activation
buffers of tens to hundreds of MB and frees them again. glibc serves blocks that large
with ``mmap`` and returns them with ``munmap`` on free, so every pass pays for zeroing
fresh pages through millions of page faults: on a 2-core CPU, SmoothGrad on the 3D
sample spent more time in the kernel than in the network (``benchmarks/bench_allocator.py``).
Raising the mmap and trim thresholds and serving every thread from the main arena (the
GUI explains in a worker thread, whose own arena could not hold blocks over 64 MB) lets
freed buffers be reused instead.

:func:`tune_allocator` is called by :func:`seg_explain.load_model`, so the CLI, the
napari plugin and library users get it once per process. Only glibc on Linux is touched
(elsewhere it does nothing). The cost: memory freed after an explanation stays with the
process for the next one instead of going back to the system. Opt out with the
environment variable ``SEG_EXPLAIN_MALLOC_TUNING=0``.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 1 << 30        # blocks below 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # do not give the heap's top back after each pass
OPT_OUT = "SEG_EXPLAIN_MALLOC_TUNING"

_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Apply the settings above once per process; True when they are in effect."""
    if "done" in _state:
        return _state["done"]
    _state["done"] = ok = _apply()
    return ok


def tuned() -> bool:
    """Whether the settings are in effect in this process (changes nothing)."""
    return _state.get("done", False)


def _apply() -> bool:
    if os.environ.get(OPT_OUT, "").strip().lower() in ("0", "off", "no", "false"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
