"""Gradient attributions of the shared target f̂_c (METHODS.md "Gradient family").

- ``gradient``: ∂f̂_c/∂x (vanilla gradient).
- ``smoothgrad``: mean over ``n_samples`` of ∂f̂_c/∂x at ``x + N(0, σ²)``,
  ``σ = noise_level · (max x − min x)`` per channel of the *prepared* image (model space);
  plain mean of the signed gradients. Sample ``i`` uses the noise drawn from
  ``torch.Generator().manual_seed(seed · 1000003 + i)`` over the whole image, so a
  window sees exactly the noise of its voxels and every class sees the same samples.
- ``integrated_gradients``: ``(x − x') · mean_{i=1..n} ∂f̂_c/∂x`` at ``x' + (i/n)(x − x')``
  (right Riemann sum, like Captum ``method="riemann_right"``). Baselines (model space):
  ``"mean"`` (default), ``"zero"``, ``"min"`` (per channel of the prepared image),
  ``"blur"`` (Gaussian blur of the prepared image, σ = 5 voxels; ``"blur:S"`` for σ = S),
  a number, or an array of the prepared image's shape ``(C, *S)`` / ``(*S)`` (finite). The
  extras report completeness: ``f_x``, ``f_baseline``, ``ig_sum`` and ``completeness_gap``
  = Σ IG − (f̂(x) − f̂(x')) (``completeness_gap_rel`` relative to |f̂(x) − f̂(x')|), and
  ``warnings``: one line when ``completeness_gap_rel`` > 0.2, naming a better baseline.

  **Default baseline "mean"** (METHODS.md's x' = 0 is kept as ``"zero"``). Networks with
  instance norm after their first convolution (both sample models, most MONAI UNets) are
  nearly invariant to ``x -> a + b·x``, so the straight path from the zero image is flat
  for α > 0 and all of f̂'s change happens next to the baseline, where 20 Riemann points
  never look: on the sample models IG from "zero" ("min" is the same image after the
  percentile scaling) sums to 6 % (2D, frontal_L) and 16 % (3D, temporal_R) of
  f̂(x) − f̂(x'). Measured with 20 steps (``benchmarks/bench_ig_baselines.py``), relative
  completeness gap / share of f̂(x) the baseline removes:

  ==========================  =============  =============  =============
  RoI                         zero           mean           blur (σ = 5)
  ==========================  =============  =============  =============
  2D frontal_L                0.94 / 1.59    0.10 / 0.84    0.15 / −0.05
  2D, 15 classes: median gap  0.94           0.09           0.07
  3D temporal_R               0.84 / 1.40    0.17 / 0.52    0.03 / 0.35
  3D frontal_L                —              0.11 / 1.43    0.01 / 0.33
  3D occipital_R              —              0.01 / 0.85    0.02 / 0.22
  ==========================  =============  =============  =============

  "mean" keeps the gap under 0.2 on every RoI measured and removes half or more of
  f̂(x); "blur" has smaller gaps in 3D but explains only a fifth to a third of f̂(x)
  there, and on the 2D slice the blurred image scores frontal_L *higher* than the image
  (the map would explain a small negative difference).

All three return the per-channel map ``(C, *S)`` on the model grid with raw, signed values;
:func:`~.base.finalize` takes them to the image grid through the adjoint of the resampling
(so sums, and IG completeness, hold on the grid of the image the user gave).

**Windows.** When the prepared image exceeds the model's patch, the model's output is
MONAI's sliding-window blend ``Σ_k w_k · out_k / Σw`` (:mod:`seg_explain.windows`,
:mod:`.engine`) and f̂ is the RoI sum of *that* output. Its gradient is computed window by
window: each window holding RoI voxels runs its batch of points once, and one backward
per class with the cotangent ``R · w_k / Σw`` (cropped to the window; padding as MONAI
pads); the window gradients are summed (no division by an overlap count). This equals
autograd through ``sliding_window_inference`` while only one window is ever in the
network. Windows without RoI voxels contribute 0 and cost nothing. For IG, ``f_x`` and
``f_baseline`` are f̂ of the blended output (the sum of the windows' weighted shares).

**Speed.** Noise samples / IG steps go through the network in batches (``batch_size``,
auto from free memory and a probe of the network's activation size). Several classes of
one image (:mod:`.multiclass`) share each forward pass: one forward of a batch, then one
backward per class (``retain_graph``). ``n_forward`` / ``n_backward`` count image rows.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..targets import class_logit
from ..windows import model_tiling, window_shape
from .base import Context
from .engine import (
    Counts,
    WindowWeights,
    baseline_tensor,
    book,
    check_same_image,
    roi_cotangent,
    single_from_multi,
    thread_hooks,
    windows_with_roi,
)
from .registry import Capabilities, Cost, CostInput, MethodSpec, Param, register

NOISE_SEED_STRIDE = 1000003
DEFAULT_BASELINE = "mean"   # measured: benchmarks/bench_ig_baselines.py (module doc)
CONSTANT_BASELINES = ("zero", "zeros", "0", "min", "minimum", "mean")


# -------------------------------------------------------------- batch sizing --
_RATIO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def activation_ratio(model) -> float | None:
    """Floats of layer outputs per input voxel (probed once on a small input), or None."""
    net = model.network
    if not isinstance(net, torch.nn.Module) or not model.hookable:
        return None
    try:
        if model in _RATIO:
            return _RATIO[model]
    except TypeError:
        return None
    n = max(16, 2 * model.divisor)
    shape = (1, model.in_channels) + (n,) * model.spatial_dims
    total = [0]

    def count(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    try:
        with thread_hooks() as hooks:   # counts this thread's probe only
            for m in leaves:
                hooks.forward(m, count)
            with torch.inference_mode():
                model.forward(torch.zeros(shape))
        ratio = total[0] / float(np.prod(shape[2:]))
    except Exception:  # noqa: BLE001 - a probe failure only means "use the default estimate"
        ratio = None
    _RATIO[model] = ratio
    return ratio


def batch_for(ctx: Context, n_points: int, wshape: Sequence[int]) -> int:
    """Points per forward pass: the user's ``batch_size`` or what fits in free memory."""
    ratio = activation_ratio(ctx.model)
    per = None
    if ratio is not None:
        # saved activations + their gradients during backward + input/grad buffers
        per = float(np.prod(wshape)) * 4.0 * (2.0 * ratio + 4.0 * ctx.model.in_channels)
    cap = 64 if ctx.model.device.type != "cpu" else 8   # bigger CPU batches only cost memory
    return int(max(1, min(int(n_points), ctx.auto_batch(per, cap=cap))))


# ------------------------------------------------------------------ the engine --
def grad_engine(model, x: torch.Tensor, targets: Sequence[tuple[int, torch.Tensor]], n_points: int,
                point_fn: Callable[[Callable, int, int], torch.Tensor], batch_size: int, counts: Counts,
                on_batch: Callable | None = None) -> Iterator[tuple[int, int]]:
    """Mean input gradient of several blended targets over ``n_points`` input points.

    ``targets``: ``(class, roi)`` pairs (roi: bool tensor of the model grid); target k's f̂
    is the RoI sum of class k in the model's *blended* output (sliding windows, see
    :mod:`.engine`). ``point_fn(crop, i0, i1)`` gives the points ``i0..i1-1`` of one window
    as a ``(b, C, *window)`` tensor, where ``crop(t)`` cuts the window out of a model-grid
    tensor ``(..., *S)`` (zeros where MONAI pads). For every window holding RoI voxels of
    some target: each batch of points is pushed through the network once, then one
    backward per target with the cotangent ``R_k · w / Σw`` (the window's share of f̂_k);
    the window gradients are summed into the model grid. Returns, per target, ``(C, *S)`` =
    the mean over points of ∂f̂_k/∂x. ``on_batch(win_index, ks, i0, i1, f)`` sees each
    batch's window shares of f̂ (``f``: ``(b, len(ks))``; summed over windows they give
    the blended f̂ of that point). Yields ``(done, total)`` batches.
    """
    S = tuple(x.shape[1:])
    C = int(x.shape[0])
    weights = WindowWeights.for_model(model, S)
    tiling = weights.tiling
    counts.backward = [0] * len(targets)
    plan = windows_with_roi(tiling, targets)
    bs = max(1, int(batch_size))
    per_window = math.ceil(n_points / bs)
    total = max(1, len(plan) * per_window)
    out = [torch.zeros((C,) + S, dtype=torch.float32) for _ in targets]
    dev = model.device
    sigmoid = model.sigmoid
    done = 0
    yield (0, total)
    for wi, ks in plan:
        w = tiling.windows[wi]
        wt = weights.of(w)

        def crop(t, w=w):
            return tiling.crop(t, w)

        rois = []
        for k in ks:
            r = crop(targets[k][1]).to(torch.float32)
            rois.append((r if wt is None else r * wt).to(dev))
        bufs = [torch.zeros((C,) + window_shape(w), dtype=torch.float32) for _ in ks]
        for i0 in range(0, n_points, bs):
            i1 = min(n_points, i0 + bs)
            xb = point_fn(crop, i0, i1).to(dev, torch.float32).requires_grad_(True)
            with torch.enable_grad():
                logits = model.forward(xb)
            counts.forward += i1 - i0
            for j, k in enumerate(ks):
                # vector-Jacobian product with ∂f̂_k/∂logits (the weighted RoI in class k's
                # channel): only class k's branch is traversed, the graph is kept for the next
                go = roi_cotangent(logits, targets[k][0], rois[j], sigmoid)
                (g,) = torch.autograd.grad(logits, xb, go, retain_graph=j < len(ks) - 1)
                bufs[j] += g.detach().sum(0).float().cpu()
                counts.backward[k] += i1 - i0
                del go, g
            if on_batch is not None:
                with torch.no_grad():
                    lg = logits.detach()
                    f = torch.stack([(class_logit(lg, targets[k][0], sigmoid) * r).flatten(1).sum(1)
                                     for k, r in zip(ks, rois)], dim=1)
                on_batch(wi, ks, i0, i1, f.double().cpu())
            del logits, xb
            done += 1
            yield (done, total)
        for j, k in enumerate(ks):
            tiling.add_to(out[k], w, bufs[j] / float(n_points))
        del bufs
    return out


def f_hat_windows(model, x: torch.Tensor, targets, counts: Counts) -> torch.Tensor:
    """Each window's share of the blended f̂ of each target, under inference mode ->
    ``(n_windows, K)``; the column sums are f̂ of the model's blended output at ``x``."""
    weights = WindowWeights.for_model(model, tuple(x.shape[1:]))
    tiling = weights.tiling
    out = torch.zeros((len(tiling.windows), len(targets)), dtype=torch.float64)
    with torch.inference_mode():
        for wi, ks in windows_with_roi(tiling, targets):
            w = tiling.windows[wi]
            wt = weights.of(w)
            logits = model.forward(tiling.crop(x, w)[None].to(model.device))
            counts.forward += 1
            for k in ks:
                c, r = targets[k]
                m = class_logit(logits, c, model.sigmoid)[0]
                rw = tiling.crop(r, w).to(torch.float32)
                rw = rw if wt is None else rw * wt
                out[wi, k] = float((m * rw.to(m.device, m.dtype)).sum())
    return out


def _baseline_name(baseline) -> str | float:
    if isinstance(baseline, str):
        return baseline
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, (bool, np.bool_)):
        return float(baseline)
    return "<array>"


# ---------------------------------------------------------------- the methods --
def _targets(ctxs) -> list[tuple[int, torch.Tensor]]:
    return [(c.target, c.roi) for c in ctxs]


def _window_shape0(ctx) -> tuple[int, ...]:
    return window_shape(model_tiling(ctx.model, ctx.shape).windows[0])


def gradient_multi(ctxs: Sequence[Context]):
    """Vanilla gradient of several classes from shared forward passes."""
    check_same_image(ctxs)
    ctx = ctxs[0]
    x = ctx.x
    counts = Counts()

    def point(crop, i0, i1):
        return crop(x)[None]

    res = yield from grad_engine(ctx.model, x, _targets(ctxs), 1, point, 1, counts)
    book(ctxs, counts)
    return [(r, {}) for r in res]


def smoothgrad_multi(ctxs: Sequence[Context], n_samples: int = 20, noise_level: float = 0.1):
    """SmoothGrad of several classes from shared forward passes (same noise samples)."""
    check_same_image(ctxs)
    n, level = int(n_samples), float(noise_level)   # checked by the registry (resolve_params)
    ctx = ctxs[0]
    x = ctx.x
    dims = tuple(range(1, x.ndim))
    sigma = level * (x.amax(dim=dims) - x.amin(dim=dims))           # (C,)
    sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    counts = Counts()
    seed = int(ctx.seed)

    def point(crop, i0, i1):
        out = crop(x)[None].repeat((i1 - i0,) + (1,) * x.ndim)
        if level > 0:
            for j, i in enumerate(range(i0, i1)):
                g = torch.Generator().manual_seed(seed * NOISE_SEED_STRIDE + i)
                out[j] += sigma * crop(torch.randn(x.shape, generator=g))
        return out

    bs = batch_for(ctx, n, _window_shape0(ctx))
    res = yield from grad_engine(ctx.model, x, _targets(ctxs), n, point, bs, counts)
    book(ctxs, counts)
    sig = [float(s) for s in sigma.flatten()]
    return [(r, {"sigma": sig[0] if len(sig) == 1 else sig, "batch_size": bs}) for r in res]


GAP_WARN = 0.2   # warn when |Σ IG − Δf̂| > GAP_WARN · |Δf̂|


def completeness_warning(gap_rel: float, baseline, steps: int, f_x: float, f_b: float,
                         ig_sum: float) -> str | None:
    """One-line warning when IG misses more than ``GAP_WARN`` of f̂(x) − f̂(x'), naming a
    better baseline (``"mean"``, the default, measured in benchmarks/bench_ig_baselines.py;
    ``"blur"`` when the mean itself falls short) and more steps."""
    if not gap_rel > GAP_WARN:
        return None
    name = _baseline_name(baseline)
    shown = name if isinstance(name, str) else f"{name:g}"
    better = "blur" if isinstance(name, str) and name.strip().lower() == DEFAULT_BASELINE else DEFAULT_BASELINE
    why = ""
    if isinstance(name, float) or (isinstance(name, str) and name.strip().lower() in CONSTANT_BASELINES
                                   and name.strip().lower() != "mean"):
        why = " (a network with instance norm undoes x -> a + b·x, so the path from this baseline is flat " \
              "except next to it)"
    elif abs(f_x - f_b) < 0.1 * max(abs(f_x), abs(f_b), 1e-12):
        why = f" (f̂(x′) = {f_b:.4g} is close to f̂(x) = {f_x:.4g}: this baseline keeps most of the evidence)"
    return (f"integrated_gradients: completeness gap {100 * gap_rel:.0f} % with baseline={shown!r}, "
            f"steps={int(steps)}: the map sums to {ig_sum:.4g} but f̂(x) − f̂(x′) = {f_x - f_b:.4g}{why}; "
            f"try baseline={better!r} or more steps")


def integrated_gradients_multi(ctxs: Sequence[Context], steps: int = 20, baseline=DEFAULT_BASELINE):
    """Integrated Gradients of several classes from shared forward passes."""
    check_same_image(ctxs)
    n = int(steps)
    ctx = ctxs[0]
    x = ctx.x
    xb0 = baseline_tensor(x, baseline, "integrated_gradients: baseline")
    diff = x - xb0
    targets = _targets(ctxs)
    K = len(targets)
    n_windows = len(model_tiling(ctx.model, ctx.shape).windows)
    f_x = torch.zeros((n_windows, K), dtype=torch.float64)
    counts = Counts()

    def point(crop, i0, i1):
        a = torch.arange(i0 + 1, i1 + 1, dtype=torch.float32) / float(n)
        a = a.reshape((-1,) + (1,) * x.ndim)
        return crop(xb0)[None] + a * crop(diff)[None]

    def on_batch(wi, ks, i0, i1, f):
        if i1 == n:  # the last point is x itself (alpha = 1)
            for j, k in enumerate(ks):
                f_x[wi, k] = f[-1, j]

    bs = batch_for(ctx, n, _window_shape0(ctx))
    res = yield from grad_engine(ctx.model, x, targets, n, point, bs, counts, on_batch)
    f_base = f_hat_windows(ctx.model, xb0, targets, counts)
    book(ctxs, counts)
    out = []
    for k, r in enumerate(res):
        attr = diff * r
        fx, fb, s = float(f_x[:, k].sum()), float(f_base[:, k].sum()), float(attr.double().sum())
        gap = s - (fx - fb)
        rel = abs(gap) / max(abs(fx - fb), 1e-12)
        warn = completeness_warning(rel, baseline, n, fx, fb, s)
        out.append((attr, {
            "f_x": fx, "f_baseline": fb, "ig_sum": s, "completeness_gap": gap,
            "completeness_gap_rel": rel, "baseline": _baseline_name(baseline),
            "n_windows": n_windows, "batch_size": bs, "warnings": [warn] if warn else []}))
    return out


def gradient(ctx: Context):
    return (yield from single_from_multi(gradient_multi)(ctx))


def smoothgrad(ctx: Context, n_samples: int = 20, noise_level: float = 0.1):
    return (yield from single_from_multi(smoothgrad_multi)(ctx, n_samples=n_samples, noise_level=noise_level))


def integrated_gradients(ctx: Context, steps: int = 20, baseline=DEFAULT_BASELINE):
    return (yield from single_from_multi(integrated_gradients_multi)(ctx, steps=steps, baseline=baseline))


# ------------------------------------------------------------------ registration --
def _passes(per_window: int, extra_forward: int = 0):
    """Cost of a gradient method: ``per_window`` forward+backward rows per RoI window."""
    def cost(info: CostInput, params: dict) -> Cost:
        n = per_window if isinstance(per_window, int) else int(params[per_window])
        return Cost(forward=info.n_windows * (n + extra_forward), backward=info.n_windows * n)
    return cost


_GRAD = dict(caps=Capabilities(dims=(2, 3), gradients=True, hooks=False, multiclass=True, map_kind="voxel"),
             unit="∂ logit sum / ∂ intensity", source="Agg2Exp §3.1",
             positive="evidence for {cls} (raising this voxel raises the RoI's summed logit)",
             negative="evidence against {cls}")

register(MethodSpec(
    "gradient", gradient, title="Vanilla gradient", multi=gradient_multi,
    question="which voxels would change the RoI's summed class logit most, to first order",
    cost=_passes(1), cost_class="cheap", **_GRAD))

register(MethodSpec(
    "smoothgrad", smoothgrad, title="SmoothGrad", multi=smoothgrad_multi,
    question="the gradient averaged over noisy copies of the image (less speckle)",
    cheaper=lambda p, sd: {"n_samples": 10} if int(p["n_samples"]) > 10 else {},
    params=(Param("n_samples", "int", 20, "noisy copies averaged", lo=1, hi=1_000_000, gui_default_3d=10),
            Param("noise_level", "float", 0.1, "noise σ as a fraction of the image's intensity range",
                  lo=0.0, hi=1.0, unit="× range")),
    cost=_passes("n_samples"), cost_class="moderate", **_GRAD))

register(MethodSpec(
    "integrated_gradients", integrated_gradients, title="Integrated Gradients", multi=integrated_gradients_multi,
    question="how much each voxel adds to the RoI's summed logit along a path from a baseline image "
             "(the map sums to f̂(x) − f̂(baseline))",
    cheaper=lambda p, sd: {"steps": 10} if int(p["steps"]) > 10 else {},
    params=(Param("steps", "int", 20, "Riemann steps from the baseline to the image", lo=1, hi=1_000_000),
            Param("baseline", "baseline", DEFAULT_BASELINE,
                  "where the path starts: mean / min / zero (per-channel constants), blur (Gaussian blur, "
                  "σ = 5 voxels; blur:S for σ = S), or a number",
                  choices=("mean", "min", "zero", "blur"), blur_sigma=True)),
    summary_fields=("completeness_gap_rel", "f_x", "f_baseline", "ig_sum"),
    cost=_passes("steps", extra_forward=1), cost_class="moderate",
    **{**_GRAD, "unit": "logit-sum units (the map sums to f̂(x) − f̂(baseline))"}))
