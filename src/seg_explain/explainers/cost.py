"""What an explanation (or an Agg2Exp run) is expected to cost before it runs: the
registry's cost model x this model's measured pass times
(:func:`seg_explain.explainers.job.measure_pass_times`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..jobs import human_seconds
from .registry import Cost, cost_input, get_spec


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
        paired = min(f, cost.backward)         # a forward with its backward: gradient passes
        batched = ps.get("forward_batched", ps["forward"])    # perturbed copies go through in batches
        return (paired * ps["forward"] + (f - paired) * batched + cost.backward * ps["backward"]) \
            * info.window_voxels + clean.forward * info.window_voxels * ps["forward"]

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

