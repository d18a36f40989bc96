"""Running the core's jobs off the GUI thread; this module only relays them.

The core runs every long computation as a generator (:mod:`seg_explain.jobs`): progress
events with stage text and ETA, cooperative cancellation with a
:class:`~seg_explain.jobs.CancelToken` (checked between steps and, through thread-owned
hooks, inside network passes). Here they run in a napari ``thread_worker`` (superqt
``GeneratorWorker``):

- *jobs* are plain generator functions over plain data (arrays copied out of the layers
  on the main thread before the job starts), viewer-agnostic in :mod:`seg_explain.frontend`
  (:mod:`~seg_explain.frontend.jobs`, :mod:`~seg_explain.frontend.requests`,
  :mod:`~seg_explain.frontend.agg2exp`); they never see a layer or the viewer. They
  yield :class:`~seg_explain.jobs.ProgressEvent` objects or ``("status", text)`` messages
  and return their result, or a :class:`~seg_explain.frontend.jobs.Failure` /
  :data:`~seg_explain.frontend.jobs.CANCELLED` (never raise: superqt swallows a
  generator's ``RuntimeError``);
- :class:`JobRunner` (main thread) starts one job at a time, drives the dock's own progress
  bar, stage line and Cancel button (not napari's activity panel: its animated "in
  progress" indicator repaints the main window about 20 times a second, and with software
  OpenGL — Xvfb, remote desktops, machines without a GPU — every repaint composites the
  whole window: a 3D SmoothGrad in the dock took 7.8 s with it and 6.4 s without, the
  same call in a script 5.5 s), forwards messages
  and results to callbacks, cancels within ~2 s and, on :meth:`JobRunner.shutdown` (dock or
  viewer closing), cancels and *waits* for the worker thread so that no signal reaches a
  deleted widget;
- :func:`ensure_imports`: torch, MONAI, matplotlib (with its Qt backend) and every explainer
  are imported on the main thread before any worker starts: an import running in a worker
  while the main thread imports the same package is what broke docks opened in quick
  succession ("partially initialized module").
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from ..explainers.job import cancel_hooks  # noqa: F401 (re-exported for the docks)
from ..frontend.jobs import CANCELLED, Failure, guarded
from ..frontend.messages import one_line
from ..jobs import CancelToken, ProgressEvent  # noqa: F401 (re-exported for the docks)

log = logging.getLogger(__name__)

_IMPORTED = threading.Event()


def ensure_imports() -> None:
    """Import the heavy libraries on the main thread, once per process (see module doc)."""
    if _IMPORTED.is_set():
        return
    import matplotlib
    import matplotlib.figure  # noqa: F401
    import monai.inferers  # noqa: F401
    import monai.networks.nets  # noqa: F401
    import monai.transforms  # noqa: F401
    import torch  # noqa: F401
    import torch.fx.experimental.symbolic_shapes  # noqa: F401 - imported lazily by the first autograd.grad
    from matplotlib.backends import backend_qtagg  # noqa: F401

    from ..explainers.registry import methods

    methods()
    import seg_explain.aggregate  # noqa: F401
    import seg_explain.plots  # noqa: F401
    _IMPORTED.set()


# ----------------------------------------------------------------- the runner --
class JobRunner:
    """Runs one generator job at a time in a napari thread worker (main-thread object).

    ``start(job, *args, desc=..., on_message=..., on_result=..., on_failure=...,
    on_cancelled=..., on_idle=...)``: ``on_message(msg)`` gets every
    message, ``on_result(value)`` the return value, ``on_failure(Failure)`` a failure
    (default: a napari error notification), ``on_idle()`` is called once when the GUI may
    start another job (finished, failed, or cancelled).
    """

    def __init__(self, grace_s: float = 1.5) -> None:
        self.grace_s = grace_s
        self.worker = None
        self.token: CancelToken | None = None
        self._job = 0
        self._running = False
        self._callbacks: dict[str, Callable] = {}
        self.last_cancel_latency_s: float | None = None
        self.last_finished_at: float | None = None
        self._old_workers: list = []
        self._queue: list = []
        self._dispatching = False

    @property
    def running(self) -> bool:
        return self._running

    def start(self, job: Callable[..., Iterator], *args, desc: str = "seg-explain",
              on_message: Callable | None = None, on_result: Callable | None = None,
              on_failure: Callable | None = None, on_cancelled: Callable | None = None,
              on_idle: Callable | None = None, pass_token: bool = True, **kwargs):
        from napari.qt.threading import create_worker

        if self._running:
            raise RuntimeError("a job is already running")
        self._job += 1
        jid = self._job
        self.token = CancelToken()
        self._callbacks = {"message": on_message, "result": on_result, "failure": on_failure,
                           "cancelled": on_cancelled, "idle": on_idle}
        if pass_token:
            kwargs["token"] = self.token
        log.debug("seg-explain: job %d started (%s)", jid, desc)
        worker = create_worker(guarded, job, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        worker.yielded.connect(lambda msg, j=jid: self._post(self._on_yield, j, msg))
        worker.returned.connect(lambda val, j=jid: self._post(self._on_return, j, val))
        worker.errored.connect(lambda exc, j=jid: self._post(self._on_return, j, Failure(one_line(exc), exc)))
        worker.aborted.connect(lambda j=jid: self._post(self._on_return, j, CANCELLED))
        worker.finished.connect(lambda w=worker: self._forget(w))
        # a job stopped by quit() at a yield emits neither `returned` nor `aborted`
        worker.finished.connect(lambda j=jid: self._post(self._on_finished, j, None))
        self.worker = worker
        self._old_workers.append(worker)
        self._running = True
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the job to stop; the GUI is idle again within ``grace_s`` at the latest."""
        if not self._running:
            return
        if self.token is not None:
            self.token.cancel()
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:  # worker already deleted
                pass
        from qtpy.QtCore import QTimer

        jid = self._job
        QTimer.singleShot(int(self.grace_s * 1000), lambda: self._force_idle(jid))

    # -- signal handlers (main thread) --
    def _post(self, handler: Callable, jid: int, value) -> None:
        """Handle worker signals strictly in order: napari's progress bar calls
        ``processEvents`` when it updates, which would otherwise deliver the next signals
        inside the handler of the current one."""
        self._queue.append((handler, jid, value))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                h, j, v = self._queue.pop(0)
                try:
                    h(j, v)
                except Exception:  # noqa: BLE001 - a failing callback must not wedge the queue
                    log.exception("seg-explain: job callback failed")
        finally:
            self._dispatching = False

    def _on_yield(self, jid: int, msg) -> None:
        if jid != self._job or not self._running:
            return
        cb = self._callbacks.get("message")
        if cb is not None:
            cb(msg)

    def _on_return(self, jid: int, value) -> None:
        if jid != self._job or not self._running:
            return
        if self.token is not None and self.token.cancelled_at is not None:
            self.last_cancel_latency_s = time.perf_counter() - self.token.cancelled_at
        if isinstance(value, Failure):
            if self.token is not None and self.token.cancelled:
                value = CANCELLED
        cbs = self._callbacks
        self._finish()
        if value is CANCELLED or (self.token is not None and self.token.cancelled):
            if cbs.get("cancelled"):
                cbs["cancelled"]()
        elif isinstance(value, Failure):
            if cbs.get("failure"):
                cbs["failure"](value)
            else:
                from napari.utils.notifications import show_error

                show_error(value.message)
        elif cbs.get("result"):
            cbs["result"](value)
        if cbs.get("idle"):
            cbs["idle"]()

    def _on_finished(self, jid: int, _value) -> None:
        if jid == self._job and self._running:  # ended without a result
            self._on_return(jid, CANCELLED if self.token is not None and self.token.cancelled
                            else Failure("the computation ended without a result"))

    def _force_idle(self, jid: int) -> None:
        if jid == self._job and self._running:
            log.info("seg-explain: the job did not stop in time; its result will be dropped")
            self._post(self._on_return, jid, CANCELLED)

    def _finish(self) -> None:
        self._running = False

    def _forget(self, worker) -> None:
        self.last_finished_at = time.perf_counter()
        if worker in self._old_workers:
            self._old_workers.remove(worker)
        if worker is self.worker:
            self.worker = None

    @property
    def thread_alive(self) -> bool:
        """Whether any worker this runner started is still computing."""
        return bool(self._old_workers)

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Cancel the job and wait (processing events) until its thread has ended, so that
        no worker signal reaches a widget that is being deleted. True when all ended."""
        from qtpy.QtWidgets import QApplication

        if self.token is not None:
            self.token.cancel()
        for w in list(self._old_workers):
            try:
                w.quit()
            except RuntimeError:
                pass
        self._callbacks = {}
        t0 = time.perf_counter()
        while self._old_workers and time.perf_counter() - t0 < timeout_s:
            QApplication.processEvents()
            time.sleep(0.01)
        self._finish()
        return not self._old_workers


def show_progress(msg, bar, stage) -> bool:
    """Show a job message on a dock's progress bar and stage label: a :class:`ProgressEvent`
    (fraction, stage text with the ETA) or a ``("status", text)`` line. False for any other
    message (the dock's own, e.g. a partial result).

    Between events the ETA counts down once a second (a long step, e.g. one image of an
    Agg2Exp run, would otherwise leave it flat), never below "0 s"."""
    if isinstance(msg, ProgressEvent):
        if msg.total:
            bar.setRange(0, 1000)
            bar.setValue(int(1000 * msg.fraction))
        stage.setText(msg.text())
        _count_down(stage, msg)
        return True
    if isinstance(msg, tuple) and msg and msg[0] == "status":
        _count_down(stage, None)
        stage.setText(str(msg[1]))
        return True
    return False


def _count_down(stage, ev) -> None:
    import time

    from qtpy.QtCore import QTimer

    timer = getattr(stage, "_eta_timer", None)
    if timer is None:
        timer = QTimer(stage)
        timer.setInterval(1000)
        timer.timeout.connect(lambda: _tick(stage))
        stage._eta_timer = timer
    stage._eta_event = (ev, time.perf_counter())
    if ev is not None and ev.eta_s is not None and ev.fraction < 1:
        timer.start()
    else:
        timer.stop()


def _tick(stage) -> None:
    import dataclasses
    import time

    ev, t0 = getattr(stage, "_eta_event", (None, 0.0))
    if ev is None or ev.eta_s is None or not stage.isVisible():
        stage._eta_timer.stop()
        return
    stage.setText(dataclasses.replace(ev, eta_s=max(0.0, ev.eta_s - (time.perf_counter() - t0))).text())
