"""Keep glibc from handing tensor buffers back to the kernel after every network pass.

Explainers run the same network hundreds of times. Each pass allocates activation
buffers of tens to hundreds of MB and frees them again. glibc serves blocks that large
with ``mmap`` and returns them with ``munmap`` on free, so every pass pays for zeroing
fresh pages through millions of page faults: on a 2-core CPU, SmoothGrad on the 3D
sample spent more time in the kernel than in the network (``benchmarks/bench_allocator.py``).
Raising the mmap and trim thresholds and serving every thread from the main arena (the
GUI explains in a worker thread, whose own arena could not hold blocks over 64 MB) lets
freed buffers be reused instead.

:func:`tune_allocator` is called by :func:`seg_explain.load_model` (first call in a
process), so every caller gets it without doing anything: library users and notebooks,
the CLI (which also calls it at start-up), the napari docks and the Dask workers (their
plugin and environment, :mod:`seg_explain.dataset`). A :class:`~seg_explain.models.SegModel`
built by hand around one's own network does not go through ``load_model``: call
``tune_allocator()`` once (or load from a file). Only glibc on Linux is touched (elsewhere
it does nothing); :func:`tuned` says whether it is in effect.

Why this and not reusing the buffers ourselves: the large buffers are allocated inside the
network's own operators (activations, autograd's saved tensors, their gradients), of any
model a user brings; PyTorch has no caching allocator for CPU memory that a library could
switch on, and passing preallocated outputs would mean rewriting each network. Measured
(``benchmarks/bench_allocator.py``, README "Page faults"): 1.55x for PdCR on the 2D sample
and about 2x for SmoothGrad on the 3D sample on a quiet 2-core machine; on a heavily loaded
one the PdCR gain shrank to 1.04x (minor faults 5.5 M -> 17 k, system time 12.7 s -> 0.6 s).

The cost: memory freed after an explanation stays with the process for the next one
instead of going back to the system (the heap is never trimmed and blocks under 1 GiB are
not unmapped): peak RSS rose from 508 to 543 MB for the 2D PdCR run and from about 1.8 to
2.2 GB for 3D SmoothGrad, and a long-lived process keeps its high-water mark. Opt out
with the environment variable ``SEG_EXPLAIN_MALLOC_TUNING=0`` (before the first
``load_model``; it is read once).
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
