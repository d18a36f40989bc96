"""The job driver: how every long computation runs, written once.

Explainers, Agg2Exp, the metrics and progressive perturbation are generators that yield
``(done, total)`` between steps and return their result. This module drives them for every
front-end (the CLI, the napari docks' worker threads, batch runs):

- :func:`drive` runs a generator to its end (optionally calling ``callback(done, total)``
  and checking a :class:`CancelToken` between steps) and returns its value;
- :func:`events` relays a generator's steps as :class:`ProgressEvent` objects (stage text,
  done/total, elapsed seconds and an ETA), so a GUI only has to show them;
- :class:`CancelToken` + :func:`cancel_hooks`: cooperative cancellation, between steps and
  *inside* a long network pass (every module of the network checks the token, for the
  calling thread only);
- :func:`explain_job`: one explanation as a job, also for a 2D model on one slice of a
  volume (``slice_index``);
- :func:`measure_pass_times` and :func:`estimate`: the expected cost of an explanation
  before it runs (the registry's cost model × this model's measured pass times).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from .errors import Cancelled


# ------------------------------------------------------------------------- progress --
@dataclass(frozen=True)
class ProgressEvent:
    """One step of a job: ``stage`` text, ``done`` of ``total`` units, seconds so far and an
    ETA in seconds (None until it can be estimated)."""

    stage: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def text(self) -> str:
        from .explainers.registry import human_seconds

        pct = f"{100 * self.fraction:3.0f}%" if self.total else ""
        eta = f", about {human_seconds(self.eta_s)} left" if self.eta_s is not None else ""
        return f"{self.stage} {pct}{eta}".strip()


class _Eta:
    """ETA from the rate since the first step that did work (the first steps include
    warm-up costs), smoothed so the estimate does not jump with every batch."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.eta: float | None = None

    def update(self, done: int, total: int) -> tuple[float, float | None]:
        now = time.perf_counter()
        if self.first is None and done > 0:
            self.first = (now, done)
        eta = None
        if self.first is not None and total and done > self.first[1]:
            rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
            raw = max(0.0, (total - done) / rate)
            eta = raw if self.eta is None else 0.7 * self.eta + 0.3 * raw
            self.eta = eta
        return now - self.t0, eta


def events(gen: Iterator, stage: str, token: CancelToken | None = None) -> Iterator[ProgressEvent]:
    """Relay a ``(done, total)`` generator as :class:`ProgressEvent`; return its value.

    Events the generator yields itself (a nested job) pass through unchanged. The token is
    checked between steps; the generator is closed whatever happens."""
    eta = _Eta()
    try:
        while True:
            if token is not None:
                token.check()
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(item, ProgressEvent):
                yield item
                continue
            done, total = int(item[0]), int(item[1])
            elapsed, left = eta.update(done, total)
            yield ProgressEvent(stage, done, total, elapsed, left)
    finally:
        gen.close()


def drive(gen: Iterator, callback: Callable[[int, int], Any] | None = None,
          token: CancelToken | None = None):
    """Run a generator to completion, calling ``callback(done, total)`` for each step
    (``(done, total)`` tuples and :class:`ProgressEvent` alike); return its value. The same
    loop as :func:`events` (token checked between steps, generator closed whatever happens)."""
    it = events(gen, "", token)
    try:
        while True:
            try:
                ev = next(it)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(ev.done, ev.total)
    finally:
        it.close()      # closes gen too, even when the callback raises


def relay(gen: Iterator, offset: int, span: int, total: int) -> Iterator[tuple[int, int]]:
    """Re-yield a sub-generator's ``(done, total)`` steps as ``offset + span·done/total`` of
    ``total`` (a part of a bigger job); return its value."""
    while True:
        try:
            d, t = next(gen)
        except StopIteration as stop:
            return stop.value
        yield (offset + min(span - 1, int(span * d / max(t, 1))) if span else offset, total)


# ----------------------------------------------------------------------- cancelling --
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
            raise Cancelled("cancelled by the user")


@contextmanager
def cancel_hooks(model, token: CancelToken | None):
    """While active, every module's forward (and every activation's backward) of
    ``model.network`` checks ``token`` for the calling thread's passes only, so a cancel
    stops a long batch within one layer and never touches another job on the same model.

    Compiled networks (TorchScript, ``torch.export``) take no hooks: they stop at the
    explainer's next step instead."""
    if token is None:
        yield
        return
    import torch

    from .explainers.engine import thread_hooks

    net = getattr(model, "network", None)
    if not isinstance(net, torch.nn.Module) or isinstance(net, torch.jit.ScriptModule):
        yield
        return

    def grad_check(_grad):
        token.check()

    def pre(_m, _inp):
        token.check()

    def post(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(grad_check)

    with thread_hooks() as hooks:
        for m in net.modules():
            hooks.pre(m, pre)
            hooks.forward(m, post)
        yield


# ------------------------------------------------------------------------------ jobs --
def explain_job(model, image, method: str, target=1, roi=None, *, token: CancelToken | None = None,
                **kwargs) -> Iterator[ProgressEvent]:
    """One explanation as a job: yields :class:`ProgressEvent` ("explaining <method>"), checks
    ``token`` between steps and inside network passes, returns the
    :class:`~seg_explain.explainers.base.Explanation` (which carries the clean prediction).

    ``kwargs``: everything :func:`seg_explain.explain` takes (``seed``, ``batch_size``,
    ``roi_mode``, ``roi_label``, ``slice_index`` and the method's parameters)."""
    from .explainers.base import explain_iter
    from .explainers.registry import get_spec

    title = get_spec(method).title
    with cancel_hooks(model, token) if token is not None else nullcontext():
        result = yield from events(explain_iter(model, image, method, target, roi, **kwargs),
                                   f"Explaining ({title})", token)
    return result


# --------------------------------------------------------------------- cost estimates --
def measure_pass_times(model, repeat: int = 2) -> dict[str, float]:
    """Warm a model up and time one forward and one forward+backward pass.

    The first gradient pass imports what torch and MONAI load lazily (so a GUI should call
    this right after loading, off its main thread, before the first explanation). The
    timings, in seconds per voxel of one network row (window or image), are kept in
    ``model.meta["pass_s"]`` for :func:`estimate`. Measured on an input of the model's
    patch (or 64 voxels per axis, at most), batch 1, the best of ``repeat`` runs."""
    import numpy as np
    import torch

    n = min(64, max(model.min_size, 2 * model.divisor, 16))
    shape = tuple(model.patch_size) if model.patch_size and np.prod(model.patch_size) <= 64 ** 3 \
        else (n,) * model.spatial_dims
    x = torch.zeros((1, model.in_channels) + tuple(shape))
    fwd = bwd = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.forward(x)
        fwd = min(fwd, time.perf_counter() - t0)
        xg = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.enable_grad():
            out = model.forward(xg)
            (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
        bwd = min(bwd, time.perf_counter() - t0 - fwd)
    vox = float(np.prod(shape))
    model.meta["pass_s"] = {"forward": fwd / vox, "backward": max(bwd, fwd) / vox, "voxels": vox}
    return model.meta["pass_s"]


@dataclass(frozen=True)
class Estimate:
    """Passes and seconds an explanation is expected to cost, with a one-line text and a
    cheaper setting when it would take long."""

    forward: int
    backward: int
    forward_max: int | None
    seconds: float | None
    seconds_max: float | None
    text: str
    warning: str = ""
    cheaper: dict | None = None
    forward_min: int | None = None
    seconds_min: float | None = None


SLOW_S = 180.0   # above this the GUI warns and proposes the cheaper setting


def estimate(model, method: str, params: dict, model_shape, roi=None, n_classes: int = 1) -> Estimate:
    """Expected cost of ``method`` with ``params`` on a model-grid ``model_shape`` (``roi``:
    a model-grid mask, or None), from the registry's cost model and the model's measured
    pass times (:func:`measure_pass_times`; no seconds before they are measured)."""
    from .explainers.registry import Cost, cost_input, get_spec, human_seconds

    spec = get_spec(method)
    info = cost_input(model, model_shape, roi, n_classes)
    full = {**spec.defaults, **{k: v for k, v in params.items() if k in spec.defaults}}
    c = spec.estimate(info, full)
    ps = model.meta.get("pass_s")
    # every explanation first predicts the clean image: every window once (counted as 1 pass)
    clean = Cost(info.n_windows_all)

    def seconds(cost, forward=None):
        if not ps:
            return None
        f = cost.forward if forward is None else forward
        return (f * ps["forward"] + cost.backward * ps["backward"]) * info.window_voxels \
            + clean.forward * info.window_voxels * ps["forward"]

    secs = seconds(c)
    secs_max = seconds(c, c.forward_max) if c.forward_max is not None and c.forward_max != c.forward else None
    secs_min = seconds(c, c.forward_min) if c.forward_min is not None and c.forward_min != c.forward else None
    unit = "window passes" if info.n_windows_all > 1 else "passes"
    text = cost_text(c, unit, secs, secs_min, secs_max)
    warning, cheaper = "", None
    if secs is not None and secs > SLOW_S:
        warning = f"this may take about {human_seconds(secs)}"
        cheaper = spec.cheaper(full, model.spatial_dims) if spec.cheaper is not None else None
        if cheaper:
            alt = seconds(spec.estimate(info, {**full, **cheaper}))
            warning += ("; " + ", ".join(f"{k}={spec.param(k).text(v)}" for k, v in cheaper.items())
                        + f" would take about {human_seconds(alt)}")
        else:
            cheaper = None
            warning += "; no cheaper setting of this method is known: paint a smaller RoI or pick a faster method"
    return Estimate(c.forward + 1, c.backward, None if c.forward_max is None else c.forward_max + 1,
                    secs, secs_max, text, warning, cheaper,
                    None if c.forward_min is None else c.forward_min + 1, secs_min)


def cost_text(c, unit: str, secs: float | None, secs_min: float | None = None,
              secs_max: float | None = None) -> str:
    """One line: the expected passes and seconds, and the range when the count depends on the
    data (PdCR's screening)."""
    from .explainers.registry import human_seconds

    fw = f"≈ {c.forward:,} forward" + (f" + {c.backward:,} backward" if c.backward else "") + f" {unit}"
    if secs is not None:
        fw += f", ≈ {human_seconds(secs)} here"
    lo = c.forward_min if c.forward_min is not None and c.forward_min != c.forward else None
    hi = c.forward_max if c.forward_max is not None and c.forward_max != c.forward else None
    if lo is not None or hi is not None:
        rng = []
        if lo is not None:
            rng.append(f"{lo:,}" + (f" ({human_seconds(secs_min)})" if secs_min is not None else ""))
        if hi is not None:
            rng.append(f"{hi:,}" + (f" ({human_seconds(secs_max)})" if secs_max is not None else ""))
        fw += " — " + " to ".join(rng) + " depending on how many blocks pass screening"
    return fw


def estimate_agg2exp(model, method: str, params: dict, model_shape, n_classes: int, n_images: int = 1) -> Estimate:
    """Expected cost of Agg2Exp: every predicted class of every image explained in its own
    predicted region (regions spread over the image: every window counts). Methods that
    share forward passes across classes (``MethodSpec.multi``) pay the forward passes once
    and one backward per class; the others pay everything per class. ``n_classes``: the
    classes expected (at most the model's foreground classes)."""
    import dataclasses

    import numpy as np

    from .explainers.registry import Cost, cost_input, get_spec, human_seconds

    spec = get_spec(method)
    k, n = max(1, int(n_classes)), max(1, int(n_images))
    shape = tuple(int(s) for s in model_shape)
    region = np.zeros(shape, bool)
    region[tuple(slice(s // 3, s - s // 3) for s in shape)] = True     # a class's region: central third
    info = cost_input(model, shape, region, k)
    if spec.caps.multiclass:      # the classes' regions together cover the image: every window
        info = dataclasses.replace(info, n_windows=info.n_windows_all)
    full = {**spec.defaults, **{p: v for p, v in params.items() if p in spec.defaults}}
    c = spec.estimate(info, full)
    fwd = c.forward if spec.multi is not None else c.forward * k
    per = Cost(fwd + info.n_windows_all, c.backward * k)
    ps = model.meta.get("pass_s")
    secs = None
    if ps:
        secs = n * (per.forward * ps["forward"] + per.backward * ps["backward"]) * info.window_voxels
    unit = "window passes" if info.n_windows_all > 1 else "passes"
    text = (f"≈ {per.forward * n:,} forward" + (f" + {per.backward * n:,} backward" if per.backward else "")
            + f" {unit} (up to {k} classes x {n} image{'s' if n > 1 else ''})"
            + (f", ≈ {human_seconds(secs)} here" if secs is not None else ""))
    warning = f"this may take about {human_seconds(secs)}" if secs is not None and secs > SLOW_S else ""
    return Estimate(per.forward * n, per.backward * n, None, secs, None, text, warning)

