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

**Threads that allocate elsewhere.** ``M_ARENA_MAX`` only limits arenas created *after*
it is set. A process that started threads before the first ``load_model`` (a Qt
application: napari's event-queue thread; a Dask worker's thread pool) already has a
second arena, and glibc hands new threads the main arena and that one in turn. A thread
on a secondary arena cannot reuse blocks over 64 MB (they are mapped and unmapped on every
pass): an explanation in the napari dock ran 2.3x slower than the same call in a script
(3D SmoothGrad, 2.7 M page faults against 0.3 M). So every job's steps run on a thread
that allocates from the main arena (:func:`main_arena_runner`, used by
:func:`seg_explain.jobs.events`, which every explanation, Agg2Exp run and dataset task
goes through): the calling thread when it already does (a script's main thread: no
change), else one of a small pool of threads found to (a step is handed over and waited
for; exceptions come back unchanged).

The cost: memory freed after an explanation stays with the process for the next one
instead of going back to the system (the heap is never trimmed and blocks under 1 GiB are
not unmapped): peak RSS rose from 508 to 543 MB for the 2D PdCR run and from about 1.8 to
2.2 GB for 3D SmoothGrad, and a long-lived process keeps its high-water mark. Opt out
with the environment variable ``SEG_EXPLAIN_MALLOC_TUNING=0`` (before the first
``load_model``; it is read once).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

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


# ----------------------------------------------------------------- the main arena --
NON_MAIN_ARENA = 0x4          # glibc chunk header flag: the chunk belongs to a secondary arena
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_pool: list[_ArenaThread] = []
_pool_lock = threading.Lock()


def on_main_arena() -> bool:
    """Whether this thread's ``malloc`` serves it from glibc's main arena (the flag in the
    header of a fresh chunk). True where the tuning is not in effect (nothing to gain)."""
    if not tuned():
        return True
    malloc, free = _malloc_free()
    p = malloc(64)
    if not p:
        return True
    try:
        return not (ctypes.c_size_t.from_address(p - _SIZE_T).value & NON_MAIN_ARENA)
    finally:
        free(p)


@functools.cache
def _malloc_free():
    libc = ctypes.CDLL(None)
    malloc, free = libc.malloc, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    return malloc, free


class _ArenaThread:
    """A daemon thread that runs the calls handed to it, one at a time."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="seg-explain compute", daemon=True)
        self.thread.start()
        self.main = self.answers.get()

    def _loop(self) -> None:
        self.answers.put(on_main_arena())
        while True:
            call = self.calls.get()
            if call is None:
                return
            fn, args = call
            try:
                self.answers.put((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller as is
                self.answers.put((False, exc))

    def run(self, fn: Callable, *args) -> Any:
        self.calls.put((fn, args))
        ok, value = self.answers.get()
        if ok:
            return value
        raise value

    def stop(self) -> None:
        self.calls.put(None)
        self.thread.join()


def _acquire(tries: int = 16) -> _ArenaThread | None:
    with _pool_lock:
        if _pool:
            return _pool.pop()
    rejected: list[_ArenaThread] = []     # kept alive while looking, so their arena is not
    try:                                  # handed straight to the next new thread
        for _ in range(tries):
            t = _ArenaThread()
            if t.main:
                return t
            rejected.append(t)
        return None
    finally:
        for t in rejected:
            t.stop()


class MainArenaRunner:
    """Runs calls on a main-arena thread (see the module docstring); :meth:`close` gives
    the thread back to the pool. ``run(fn, *args)`` blocks until ``fn(*args)`` returns."""

    def __init__(self, worker: _ArenaThread | None) -> None:
        self.worker = worker

    def run(self, fn: Callable, *args) -> Any:
        return fn(*args) if self.worker is None else self.worker.run(fn, *args)

    def close(self) -> None:
        if self.worker is not None:
            with _pool_lock:
                _pool.append(self.worker)
            self.worker = None


def main_arena_runner() -> MainArenaRunner:
    """A runner for one job's steps: direct when this thread allocates from the main arena
    (or the tuning is off), else on a pooled thread that does (None found: direct)."""
    return MainArenaRunner(None if on_main_arena() else _acquire())
