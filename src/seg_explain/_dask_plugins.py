"""Dask worker plugins for the local cluster of :mod:`seg_explain.dataset` (imported only when
Dask runs; workers import it by name when the plugin reaches them)."""
from __future__ import annotations

import signal
import threading

from distributed.diagnostics.plugin import WorkerPlugin


class IgnoreSigint(WorkerPlugin):
    """Ctrl-C in a terminal reaches every process of its group: the local cluster's workers
    (restarted ones included) ignore it and leave it to the client, which cancels the tasks,
    keeps what finished and closes the cluster."""

    name = "seg-explain-ignore-sigint"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class TuneAllocator(WorkerPlugin):
    """:func:`seg_explain.allocator.tune_allocator` on every worker before its first task: a
    task runs in a worker thread, whose own glibc arena would serve every activation buffer
    with mmap/munmap (page faults on each pass; measured 2-3x slower than the main thread)."""

    name = "seg-explain-tune-allocator"

    def setup(self, worker) -> None:
        from .allocator import tune_allocator

        tune_allocator()
