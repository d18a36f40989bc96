"""Gradient attributions of the shared target f̂_c (METHODS.md "Gradient family").

- ``gradient``: ∂f̂_c/∂x (vanilla gradient).
- ``smoothgrad``: mean over ``n_samples`` of ∂f̂_c/∂x at ``x + N(0, σ²)``,
  ``σ = noise_level · (max x − min x)`` per channel of the *prepared* image (model space);
  plain mean of the signed gradients. Sample ``i`` uses the noise drawn from
  ``torch.Generator().manual_seed(seed · 1000003 + i)`` over the whole image, so a
  window sees exactly the noise of its voxels and every class sees the same samples.
- ``integrated_gradients``: ``(x − x') · mean_{i=1..n} ∂f̂_c/∂x`` at ``x' + (i/n)(x − x')``
  (right Riemann sum, like Captum ``method="riemann_right"``). Baselines (model space):
  ``"zero"``, ``"min"`` / ``"mean"`` (per channel of the prepared image), ``"blur"``
  (Gaussian blur of the prepared image, σ = 5 voxels; ``"blur:S"`` for σ = S), a number,
  or an array of the prepared image's shape ``(C, *S)`` / ``(*S)``. The extras report
  completeness: ``f_x``, ``f_baseline``, ``ig_sum`` and ``completeness_gap`` =
  Σ IG − (f̂(x) − f̂(x')) (``completeness_gap_rel`` relative to |f̂(x) − f̂(x')|).

All three return the per-channel map ``(C, *S)`` on the model grid with raw, signed values.

**Windows.** When the prepared image exceeds the model's patch, every window
(:mod:`seg_explain.windows`) is explained on its own, its f̂ restricted to the RoI voxels
inside it; the per-window maps are averaged over the windows that cover each voxel.
Windows without RoI voxels contribute 0 (their f̂ is identically 0) and cost nothing.
For IG on several windows, ``f_x``/``f_baseline``/``ig_sum`` are sums over windows of the
window quantities (completeness holds per window, before the overlap averaging).

**Speed.** Noise samples / IG steps go through the network in batches (``batch_size``,
auto from free memory and a probe of the network's activation size). Several classes of
one image (:mod:`.multiclass`) share each forward pass: one forward of a batch, then one
backward per class (``retain_graph``). ``n_forward`` / ``n_backward`` count image rows.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputMismatchError, MethodError
from ..targets import class_logit
from ..windows import WindowAccumulator, model_windows, window_shape
from .base import Context, register

NOISE_SEED_STRIDE = 1000003
BLUR_SIGMA = 5.0


# ----------------------------------------------------------------- bookkeeping --
@dataclass
class Counts:
    """Passes done by one shared computation (image rows)."""

    forward: int = 0
    backward: list[int] = field(default_factory=list)


def book(ctxs: Sequence[Context], counts: Counts) -> None:
    """Add a shared computation's passes to each class's context (forwards are shared)."""
    for k, c in enumerate(ctxs):
        c.n_forward += counts.forward
        c.n_backward += counts.backward[k]


def check_same_image(ctxs: Sequence[Context]) -> None:
    if not ctxs:
        raise MethodError("nothing to explain: no class given")
    x0 = ctxs[0].prep.x
    if any(c.prep.x is not x0 or c.model is not ctxs[0].model for c in ctxs[1:]):
        raise MethodError("classes explained together must share one prepared image and model")


# -------------------------------------------------------------- batch sizing --
_RATIO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model.forward(torch.zeros(shape))
        ratio = total[0] / float(np.prod(shape[2:]))
    except Exception:  # noqa: BLE001 - a probe failure only means "use the default estimate"
        ratio = None
    finally:
        for h in handles:
            h.remove()
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
                point_fn: Callable[[tuple, int, int], torch.Tensor], batch_size: int, counts: Counts,
                on_batch: Callable | None = None, on_window: Callable | None = None
                ) -> Iterator[tuple[int, int]]:
    """Mean input gradient of several targets over ``n_points`` input points, windowed.

    ``targets``: ``(class, roi)`` pairs (roi: bool tensor of the model grid). ``point_fn(win,
    i0, i1)`` gives the points ``i0..i1-1`` of window ``win`` as a ``(b, C, *w)`` tensor.
    For every window holding RoI voxels of some target: each batch of points is pushed
    through the network once, then one backward per target (its f̂ restricted to the
    window's RoI voxels). Returns, per target, ``(C, *S)`` = the window-averaged mean
    gradient. ``on_batch(win_index, ks, i0, i1, f)`` sees the targets' f̂ of each batch
    (``f``: ``(b, len(ks))``); ``on_window(win_index, k, mean_grad)`` each window's result.
    Yields ``(done, total)`` batches.
    """
    S = tuple(x.shape[1:])
    C = int(x.shape[0])
    windows = model_windows(model, S)
    counts.backward = [0] * len(targets)
    plan = []
    for wi, w in enumerate(windows):
        ks = [k for k, (_, r) in enumerate(targets) if bool(r[w].any())]
        if ks:
            plan.append((wi, ks))
    bs = max(1, int(batch_size))
    per_window = math.ceil(n_points / bs)
    total = max(1, len(plan) * per_window)
    accs = [WindowAccumulator(S, windows, lead=(C,)) for _ in targets]
    dev = model.device
    sigmoid = model.sigmoid
    done = 0
    yield (0, total)
    for wi, ks in plan:
        w = windows[wi]
        rois = [targets[k][1][w].to(dev, torch.float32) for k in ks]
        bufs = [torch.zeros((C,) + window_shape(w), dtype=torch.float32) for _ in ks]
        for i0 in range(0, n_points, bs):
            i1 = min(n_points, i0 + bs)
            xb = point_fn(w, i0, i1).to(dev, torch.float32).requires_grad_(True)
            with torch.enable_grad():
                logits = model.forward(xb)
            counts.forward += i1 - i0
            for j, k in enumerate(ks):
                # vector-Jacobian product with ∂f̂_k/∂logits (the RoI in class k's channel):
                # only class k's branch is traversed, the graph is kept for the next class
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
            mean = bufs[j] / float(n_points)
            if on_window is not None:
                on_window(wi, k, mean)
            accs[k].add(w, mean)
    return [a.result() for a in accs]


def roi_cotangent(logits: torch.Tensor, c: int, roi: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """∂f̂_c/∂logits for a batch: the RoI (float, window grid) in class c's logit channel."""
    go = torch.zeros_like(logits)
    if sigmoid:
        go[:, 0] = roi if c == 1 else -roi
    else:
        go[:, c] = roi
    return go


def f_hat_windows(model, x: torch.Tensor, targets, counts: Counts) -> torch.Tensor:
    """f̂ of each target summed over its windows, under inference mode -> ``(len(windows), K)``."""
    windows = model_windows(model, tuple(x.shape[1:]))
    out = torch.zeros((len(windows), len(targets)), dtype=torch.float64)
    with torch.inference_mode():
        for wi, w in enumerate(windows):
            ks = [k for k, (_, r) in enumerate(targets) if bool(r[w].any())]
            if not ks:
                continue
            logits = model.forward(x[(slice(None),) + w][None].to(model.device))
            counts.forward += 1
            for k in ks:
                c, r = targets[k]
                m = class_logit(logits, c, model.sigmoid)[0]
                out[wi, k] = float((m * r[w].to(m.device, m.dtype)).sum())
    return out


# ------------------------------------------------------------------ baselines --
def baseline_tensor(x: torch.Tensor, baseline) -> torch.Tensor:
    """The IG baseline ``x'`` ``(C, *S)`` in model space (see the module doc)."""
    dims = tuple(range(1, x.ndim))
    if isinstance(baseline, torch.Tensor) or isinstance(baseline, np.ndarray) or (
            isinstance(baseline, (list, tuple)) and not isinstance(baseline, str)):
        b = torch.as_tensor(np.asarray(baseline.detach().cpu() if isinstance(baseline, torch.Tensor)
                                       else baseline), dtype=torch.float32)
        if b.ndim == 0:
            return torch.full_like(x, float(b))
        if tuple(b.shape) == tuple(x.shape[1:]):
            b = b[None].expand_as(x)
        if tuple(b.shape) != tuple(x.shape):
            raise InputMismatchError(
                f"baseline array of shape {tuple(b.shape)} does not match the prepared image "
                f"{tuple(x.shape)} (model space: (C, *S) or (*S))")
        return b.contiguous().clone()
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, str):
        name = baseline.strip().lower()
        if name in ("zero", "zeros", "0"):
            return torch.zeros_like(x)
        if name in ("min", "minimum"):
            return x.amin(dim=dims, keepdim=True).expand_as(x).clone()
        if name == "mean":
            return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
        if name == "blur" or name.startswith("blur:"):
            try:
                sigma = float(name.split(":", 1)[1]) if ":" in name else BLUR_SIGMA
            except ValueError:
                raise MethodError(f"baseline {baseline!r}: expected 'blur' or 'blur:SIGMA'") from None
            from scipy.ndimage import gaussian_filter

            arr = x.numpy()
            out = np.stack([gaussian_filter(a, sigma=sigma, mode="nearest") for a in arr])
            return torch.from_numpy(out.astype(np.float32))
    raise MethodError(f"baseline must be 'zero', 'min', 'mean', 'blur', a number or an array; got {baseline!r}")


# ---------------------------------------------------------------- the methods --
def _targets(ctxs) -> list[tuple[int, torch.Tensor]]:
    return [(c.target, c.roi) for c in ctxs]


def _window_shape0(ctx) -> tuple[int, ...]:
    return window_shape(model_windows(ctx.model, ctx.shape)[0])


def _check_int(name, v, lo=1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or int(v) != v or int(v) < lo:
        raise MethodError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def gradient_multi(ctxs: Sequence[Context]):
    """Vanilla gradient of several classes from shared forward passes."""
    check_same_image(ctxs)
    ctx = ctxs[0]
    x = ctx.x
    counts = Counts()

    def point(w, i0, i1):
        return x[(slice(None),) + w][None]

    res = yield from grad_engine(ctx.model, x, _targets(ctxs), 1, point, 1, counts)
    book(ctxs, counts)
    return [(r, {}) for r in res]


def smoothgrad_multi(ctxs: Sequence[Context], n_samples: int = 20, noise_level: float = 0.1):
    """SmoothGrad of several classes from shared forward passes (same noise samples)."""
    check_same_image(ctxs)
    n = _check_int("n_samples", n_samples)
    try:
        level = float(noise_level)
    except (TypeError, ValueError):
        raise MethodError(f"noise_level must be a number >= 0, got {noise_level!r}") from None
    if not level >= 0:
        raise MethodError(f"noise_level must be >= 0, got {noise_level!r}")
    ctx = ctxs[0]
    x = ctx.x
    dims = tuple(range(1, x.ndim))
    sigma = level * (x.amax(dim=dims) - x.amin(dim=dims))           # (C,)
    sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    counts = Counts()
    seed = int(ctx.seed)

    def point(w, i0, i1):
        full = (slice(None),) + w
        out = x[full][None].repeat((i1 - i0,) + (1,) * x.ndim)
        if level > 0:
            for j, i in enumerate(range(i0, i1)):
                g = torch.Generator().manual_seed(seed * NOISE_SEED_STRIDE + i)
                out[j] += sigma * torch.randn(x.shape, generator=g)[full]
        return out

    bs = batch_for(ctx, n, _window_shape0(ctx))
    res = yield from grad_engine(ctx.model, x, _targets(ctxs), n, point, bs, counts)
    book(ctxs, counts)
    sig = [float(s) for s in sigma.flatten()]
    return [(r, {"sigma": sig[0] if len(sig) == 1 else sig, "batch_size": bs}) for r in res]


def integrated_gradients_multi(ctxs: Sequence[Context], steps: int = 20, baseline="zero"):
    """Integrated Gradients of several classes from shared forward passes."""
    check_same_image(ctxs)
    n = _check_int("steps", steps)
    ctx = ctxs[0]
    x = ctx.x
    xb0 = baseline_tensor(x, baseline)
    diff = x - xb0
    targets = _targets(ctxs)
    K = len(targets)
    windows = model_windows(ctx.model, ctx.shape)
    f_x = torch.zeros((len(windows), K), dtype=torch.float64)
    ig_sum = torch.zeros(K, dtype=torch.float64)
    counts = Counts()

    def point(w, i0, i1):
        full = (slice(None),) + w
        a = torch.arange(i0 + 1, i1 + 1, dtype=torch.float32) / float(n)
        a = a.reshape((-1,) + (1,) * x.ndim)
        return xb0[full][None] + a * diff[full][None]

    def on_batch(wi, ks, i0, i1, f):
        if i1 == n:  # the last point is x itself (alpha = 1)
            for j, k in enumerate(ks):
                f_x[wi, k] = f[-1, j]

    def on_window(wi, k, mean):
        ig_sum[k] += float((diff[(slice(None),) + windows[wi]].double() * mean.double()).sum())

    bs = batch_for(ctx, n, _window_shape0(ctx))
    res = yield from grad_engine(ctx.model, x, targets, n, point, bs, counts, on_batch, on_window)
    f_base = f_hat_windows(ctx.model, xb0, targets, counts)
    book(ctxs, counts)
    out = []
    for k, r in enumerate(res):
        fx, fb, s = float(f_x[:, k].sum()), float(f_base[:, k].sum()), float(ig_sum[k])
        gap = s - (fx - fb)
        out.append((diff * r, {
            "f_x": fx, "f_baseline": fb, "ig_sum": s, "completeness_gap": gap,
            "completeness_gap_rel": abs(gap) / max(abs(fx - fb), 1e-12),
            "baseline": baseline if isinstance(baseline, (str, int, float)) else "<array>",
            "n_windows": len(windows), "batch_size": bs}))
    return out


def _single(multi):
    def run(ctx: Context, **params):
        res = yield from multi([ctx], **params)
        attr, extras = res[0]
        return attr, extras
    return run


@register("gradient", defaults={}, kind="gradient",
          doc="Vanilla gradient ∂f̂_c/∂x of the RoI's summed class logits (per channel, signed).")
def gradient(ctx: Context):
    return (yield from _single(gradient_multi)(ctx))


@register("smoothgrad", defaults={"n_samples": 20, "noise_level": 0.1}, kind="gradient",
          doc="SmoothGrad: mean gradient over n_samples noisy copies, σ = noise_level × image range.")
def smoothgrad(ctx: Context, n_samples: int = 20, noise_level: float = 0.1):
    return (yield from _single(smoothgrad_multi)(ctx, n_samples=n_samples, noise_level=noise_level))


@register("integrated_gradients", defaults={"steps": 20, "baseline": "zero"}, kind="gradient",
          doc="Integrated Gradients (right Riemann sum, `steps` points) from a baseline "
              "(zero/min/mean/blur/array); reports the completeness gap.")
def integrated_gradients(ctx: Context, steps: int = 20, baseline="zero"):
    return (yield from _single(integrated_gradients_multi)(ctx, steps=steps, baseline=baseline))


gradient.multi = gradient_multi
smoothgrad.multi = smoothgrad_multi
integrated_gradients.multi = integrated_gradients_multi
