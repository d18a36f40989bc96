"""Running the core's generators off the GUI thread.

The core exposes every long computation as a generator yielding ``(done, total)``
(:func:`seg_explain.explain_iter`, :func:`seg_explain.aggregate.agg2exp_iter`). Here they
run in a napari ``thread_worker`` (superqt ``GeneratorWorker``):

- *jobs* are plain generator functions over plain data (arrays copied out of the layers
  on the main thread before the job starts); they never see a layer or the viewer. They
  yield messages ``("progress", done, total)``, ``("status", text)`` or ``("partial",
  name, payload)`` and return their result, or a :class:`Failure` / :data:`CANCELLED`
  (never raise: superqt swallows a generator's ``RuntimeError``);
- :class:`JobRunner` (main thread) starts one job at a time, drives a napari progress bar
  (cancelable from the activity dock too), forwards messages and results to callbacks and
  cancels within ~2 s: the worker stops at its next yield, and a :class:`CancelToken`
  checked by forward hooks (and gradient hooks) on every module of the network stops it
  *inside* a long batch; if the compute still has not stopped after ``grace_s`` the GUI
  goes back to idle anyway and the late result is dropped.

torch and the core are imported inside the jobs, so importing this module is cheap.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- cancelling --
class CancelToken:
    """A flag a job checks; :meth:`check` raises :class:`seg_explain.errors.Cancelled`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.cancelled_at: float | None = None

    def cancel(self) -> None:
        if not self._event.is_set():
            self.cancelled_at = time.perf_counter()
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            from ..errors import Cancelled

            raise Cancelled("cancelled by the user")


@contextmanager
def cancel_hooks(model, token: CancelToken):
    """While active, every module's forward (and every activation's backward) of
    ``model.network`` checks ``token``, so a cancel stops a long batch within one layer.

    The hooks act only for the thread that entered this block (the job's worker thread;
    :func:`seg_explain.explainers.engine.thread_hooks`): another job explaining the same
    model at the same time is never stopped by this job's token. Compiled networks
    (TorchScript, ``torch.export``) cannot take hooks: they stop at the explainer's next
    yield instead."""
    net = getattr(model, "network", None)
    hooks = None
    try:
        import torch

        from ..explainers.engine import HookSet

        if isinstance(net, torch.nn.Module) and not isinstance(net, torch.jit.ScriptModule):
            def grad_check(grad):
                token.check()
                return None

            def pre(_m, _inp):
                token.check()

            def post(_m, _inp, out):
                if isinstance(out, torch.Tensor) and out.requires_grad:
                    out.register_hook(grad_check)   # this pass's own tensor: this job only

            hooks = HookSet()          # owned by this (the job's) thread
            for m in net.modules():
                hooks.pre(m, pre)
                hooks.forward(m, post)
    except Exception:  # noqa: BLE001 - hooks are an optimisation; yields still stop the job
        log.debug("cannot install cancel hooks", exc_info=True)
        if hooks is not None:
            hooks.remove()
            hooks = None
    try:
        yield
    finally:
        if hooks is not None:
            hooks.remove()


# --------------------------------------------------------------------- results --
@dataclass
class Failure:
    """What a job returns when it failed: the one-line cause for the user."""

    message: str
    exc: BaseException | None = None


class _Cancelled:
    def __repr__(self) -> str:
        return "CANCELLED"


CANCELLED = _Cancelled()


def one_line(exc: BaseException) -> str:
    """The user-facing one-line cause of an exception."""
    from ..errors import SegExplainError

    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, SegExplainError):
        return first or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return "Out of memory: try a smaller batch_size, fewer samples, the CPU device or a crop of the image"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def guarded(job: Callable[..., Iterator], *args, **kwargs) -> Iterator:
    """Run generator ``job`` turning exceptions into :class:`Failure` / :data:`CANCELLED`."""
    from ..errors import Cancelled

    try:
        result = yield from job(*args, **kwargs)
        return result
    except Cancelled:
        return CANCELLED
    except GeneratorExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - everything reaches the user as one line
        log.warning("seg-explain job failed", exc_info=True)
        return Failure(one_line(exc), exc)


# ----------------------------------------------------------------------- models --
class ModelCache:
    """Models loaded by (path, device); one per dock, shared by its jobs (thread-safe)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(path, device: str) -> tuple[str, str]:
        return (str(path), str(device or "auto"))

    def cached(self, path, device: str):
        return self._models.get(self.key(path, device))

    def get(self, path, device: str):
        k = self.key(path, device)
        with self._lock:
            m = self._models.get(k)
            if m is None:
                from .. import load_model

                m = load_model(path, device=device or "auto")
                self._models[k] = m
            return m

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def warm_up(model) -> None:
    """One tiny gradient explanation right after loading.

    torch, MONAI and the explainers import modules lazily on first use (e.g. the first
    ``torch.autograd.grad`` imports sympy, MONAI imports matplotlib), and an import holds
    the GIL for its whole duration, so the GUI would freeze for ~1 s at the start of the
    first explanation. Paying it here, while the dock says "Loading model", keeps the
    event loop fluid once an explanation runs."""
    try:
        import torch.fx.experimental.symbolic_shapes  # noqa: F401 - the big lazy import
        from ..explainers.base import explain, methods

        methods()
        n = max(16, int(getattr(model, "divisor", 1) or 1))
        shape = (n,) * int(model.spatial_dims)
        if model.in_channels > 1:
            shape = (int(model.in_channels),) + shape
        img = np.random.default_rng(0).random(shape).astype(np.float32)
        roi = np.ones(shape[-int(model.spatial_dims):], bool)
        explain(model, img, "gradient", target=0, roi=roi)
    except Exception:  # noqa: BLE001 - warming up is best effort
        log.debug("warm-up failed", exc_info=True)


def load_model_job(cache: ModelCache, path, device: str) -> Iterator:
    """Load (or fetch) a model; returns a small description (names, dims, layers)."""
    yield ("status", f"Loading model {path}")
    fresh = cache.cached(path, device) is None
    m = cache.get(path, device)
    if fresh:
        yield ("status", "Warming up")
        warm_up(m)
    layers: list[str] = []
    try:
        from ..explainers.cams import candidate_layers

        if m.hookable:
            layers = list(candidate_layers(m.network))
    except Exception:  # noqa: BLE001 - only a convenience list for the CAM layer box
        layers = []
    return {"path": str(path), "device": str(m.device), "class_names": list(m.class_names),
            "spatial_dims": int(m.spatial_dims), "in_channels": int(m.in_channels),
            "name": m.name or str(path), "hookable": bool(m.hookable), "layers": layers}


# -------------------------------------------------------------------- explain --
@dataclass
class ExplainRequest:
    """Everything an explanation job needs, as plain data (no layers)."""

    model_path: str
    device: str
    image: Any                      # LoadedImage with a private copy of the voxels
    method: str
    target: str | int
    roi: np.ndarray | None = None   # bool mask on the image grid, or None (= predicted class)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int | None = None
    need_prediction: bool = True
    bank_images: list | None = None  # PdCR bank built from layers (LoadedImage copies)
    slice_index: int | None = None   # 2D model on a 3D image: the axial slice explained
    full_shape: tuple[int, ...] | None = None


@dataclass
class ExplainResult:
    attribution: np.ndarray          # on the (full) image grid, float32
    limit: float
    max_abs: float
    method: str
    target: int
    target_name: str
    params: dict[str, Any]
    elapsed_s: float
    n_forward: int
    n_backward: int
    extras: dict[str, Any]
    roi: np.ndarray
    outline: np.ndarray | None = None
    summary: dict[str, Any] | None = None
    model_name: str = ""
    device: str = ""


def _embed(arr: np.ndarray, req: ExplainRequest, fill=0) -> np.ndarray:
    """A 2D result of a slice back into the 3D volume (other slices = fill)."""
    if req.slice_index is None:
        return arr
    out = np.full(req.full_shape, fill, dtype=arr.dtype)
    out[req.slice_index] = arr
    return out


def explain_job(req: ExplainRequest, cache: ModelCache, token: CancelToken) -> Iterator:
    """Load the model, predict (if asked), explain; yields messages, returns ExplainResult."""
    from ..explainers.base import explain_iter

    yield ("status", "Loading model")
    model = cache.get(req.model_path, req.device)
    token.check()
    params = dict(req.params)
    if req.bank_images is not None:
        params["bank"] = req.bank_images
    with cancel_hooks(model, token):
        if req.need_prediction:
            yield ("status", "Predicting")
            pred = model.predict(req.image)
            token.check()
            yield ("partial", "prediction", {"labels": _embed(np.asarray(pred).astype(np.int32), req),
                                             "class_names": list(model.class_names),
                                             "model_name": model.name or req.model_path})
        yield ("status", f"Explaining ({req.method})")
        gen = explain_iter(model, req.image, req.method, target=req.target, roi=req.roi, seed=req.seed,
                           batch_size=req.batch_size, **params)
        try:
            while True:
                token.check()
                try:
                    done, total = next(gen)
                except StopIteration as stop:
                    exp = stop.value
                    break
                yield ("progress", int(done), int(total))
        finally:
            gen.close()
    token.check()
    yield ("status", "Drawing")
    from .layers import roi_outline, symmetric_limits

    attr = _embed(np.asarray(exp.attribution, np.float32), req)
    roi = _embed(np.asarray(exp.roi, bool), req, False)
    robust = req.method not in ("pdcr",)
    lim, mx = symmetric_limits(attr, robust=robust)
    extras = dict(exp.extras or {})
    summary = None
    outline = None
    if req.method == "pdcr":
        outline = roi_outline(roi, 3 if roi.ndim == 3 else 2)
        summary = {k: extras[k] for k in ("share_positive", "share_negative", "share_irrelevant", "m0",
                                          "n_blocks", "n_roi_blocks", "n_relevant", "ate_min", "ate_max")
                   if k in extras}
    return ExplainResult(attr, lim, mx, exp.method, int(exp.target), exp.target_name, dict(exp.params),
                         float(exp.elapsed_s), int(exp.n_forward), int(getattr(exp, "n_backward", 0)),
                         extras, roi, outline, summary, model.name or req.model_path, str(model.device))


def scalar_items(d: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalar entries of a dict (for layer metadata)."""
    from ..explainers.base import NOT_SCALAR, json_scalar

    out = {k: json_scalar(v) for k, v in d.items()}
    return {k: v for k, v in out.items() if v is not NOT_SCALAR}


# ----------------------------------------------------------------- the runner --
class JobRunner:
    """Runs one generator job at a time in a napari thread worker (main-thread object).

    ``start(job, *args, desc=..., on_message=..., on_result=..., on_failure=...,
    on_cancelled=..., on_idle=...)``: ``on_message(msg)`` gets every non-progress
    message, ``on_result(value)`` the return value, ``on_failure(Failure)`` a failure
    (default: a napari error notification), ``on_idle()`` is called once when the GUI may
    start another job (finished, failed, or cancelled).
    """

    def __init__(self, grace_s: float = 1.5) -> None:
        self.grace_s = grace_s
        self.worker = None
        self.token: CancelToken | None = None
        self.pbar = None
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
        self.pbar = _make_progress(desc, self.cancel)
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
        if isinstance(msg, tuple) and msg and msg[0] == "progress":
            _, done, total = msg
            pb = self.pbar
            if pb is not None:
                if pb.total != total:
                    pb.total = total
                pb.n = min(done, total) if total else done
                pb.update(0)
            return
        if isinstance(msg, tuple) and msg and msg[0] == "status" and self.pbar is not None:
            self.pbar.set_description(str(msg[1]))
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
        if self.pbar is not None:
            try:
                self.pbar.close()
            except Exception:  # noqa: BLE001
                pass
            self.pbar = None

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


def _make_progress(desc: str, on_cancel: Callable[[], None]):
    from napari.utils import cancelable_progress

    class _Progress(cancelable_progress):
        def cancel(self) -> None:  # the activity dock's cancel button
            super().cancel()
            on_cancel()

    return _Progress(total=0, desc=desc)
