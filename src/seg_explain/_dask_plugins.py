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
