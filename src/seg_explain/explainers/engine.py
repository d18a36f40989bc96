"""Machinery the explainers share: thread-owned forward hooks, sliding-window blend weights,
baselines (reference images), the model's blended logits of a batch, the RoI cotangent of
the target f-hat, pass bookkeeping (:class:`Counts`, :func:`book`) and the one-class adapter of
a several-classes explainer (:func:`single_from_multi`). The RoI-Dice engine of the
perturbation methods is :mod:`.roi_dice`.

**Hooks** (:func:`thread_hooks`). A ``SegModel``'s network is one object shared by every
explanation (the GUI runs an explanation in a worker thread while another may be running,
Agg2Exp runs classes and images in threads). A plain ``module.register_forward_hook`` fires
for *every* thread's forward pass through that module, so a CAM's capture hook would also
swallow (and detach) the activations of a gradient explanation running at the same time,
and two concurrent CAMs would each capture the other's pass. Every hook the project
registers therefore goes through :func:`thread_hooks`: the hooks act only for the forward
passes of the thread that installed them (``threading.get_ident()`` is compared with the
owner's), keep what they capture in storage local to the call, and are removed when the
``with`` block ends. Other threads' passes go through the same modules untouched.

**Blend weights** (:class:`WindowWeights`). ``sliding_window_inference`` blends the window
outputs as ``out = Σ_k w_k · out_k / Σ_k w_k`` with ``w`` MONAI's
``compute_importance_map`` (``"constant"``: ones; ``"gaussian"``: a Gaussian with
σ = ``sigma_scale`` · patch, clamped away from 0), summed over all windows of the padded
image (:mod:`seg_explain.windows`). So the blended RoI sum is
``f̂ = Σ_k ⟨R · w_k / Σw, out_k⟩`` and its input gradient is the sum over windows of each
window's vector-Jacobian product with the cotangent ``R · w_k / Σw`` (cropped to the
window) — exactly autograd through ``sliding_window_inference``, at the cost of one
backward per window holding RoI voxels (what the unweighted version cost).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MethodError
from ..windows import Tiling, Window, WindowWeights

if TYPE_CHECKING:  # pragma: no cover
    from .base import Context

__all__ = ["HookSet", "thread_hooks", "windows_with_roi", "WindowWeights", "WindowAccumulator",
           "baseline_tensor", "blended_logits", "window_rows", "f_hat_batch", "f_hats_batch", "Counts", "book",
           "check_same_image", "single_from_multi", "roi_cotangent"]


# -------------------------------------------------------------------------- hooks --
class HookSet:
    """Hooks installed by one thread for the duration of one ``with thread_hooks()`` block.

    ``forward(module, fn)``: ``fn(module, inputs, output)`` runs after ``module``'s forward
    (its return value, if not None, replaces the output, as with ``register_forward_hook``);
    ``pre(module, fn)``: ``fn(module, inputs)`` runs before it. Both act only for forward
    passes run by the owner thread. ``capture(module)`` keeps the owner's outputs of
    ``module`` in a fresh list (call-local storage) and returns that list.
    """

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self._handles: list[Any] = []

    def _mine(self, fn: Callable) -> Callable:
        owner = self.owner

        def hook(*args):
            if threading.get_ident() != owner:
                return None
            return fn(*args)
        return hook

    def forward(self, module: torch.nn.Module, fn: Callable) -> None:
        self._handles.append(module.register_forward_hook(self._mine(fn)))

    def pre(self, module: torch.nn.Module, fn: Callable) -> None:
        self._handles.append(module.register_forward_pre_hook(self._mine(fn)))

    def capture(self, module: torch.nn.Module, transform: Callable | None = None) -> list:
        """Append ``transform(output)`` (default: the output) of every owner pass; when
        ``transform`` returns a pair ``(kept, replacement)`` the replacement becomes the
        module's output."""
        store: list = []

        def fn(_m, _inp, out):
            if transform is None:
                store.append(out)
                return None
            kept, repl = transform(out)
            store.append(kept)
            return repl
        self.forward(module, fn)
        return store

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def thread_hooks() -> Iterator[HookSet]:
    """``with thread_hooks() as hooks: hooks.forward(module, fn); ...`` — see :class:`HookSet`.

    All hooks are removed when the block ends (also on an exception)."""
    hs = HookSet()
    try:
        yield hs
    finally:
        hs.remove()


# -------------------------------------------------------------------- blend weights --
def windows_with_roi(tiling: Tiling, targets) -> list[tuple[int, list[int]]]:
    """``(window index, indices of the targets with RoI voxels in it)`` for every window
    that holds any; ``targets`` are ``(class, roi)`` pairs (roi: bool, image grid of the
    tiling). Windows without RoI voxels contribute nothing to f̂ and are never run."""
    plan = []
    for wi, w in enumerate(tiling.windows):
        src, _ = tiling.inner(w)
        ks = [k for k, (_, r) in enumerate(targets) if bool(r[src].any())]
        if ks:
            plan.append((wi, ks))
    return plan


class WindowAccumulator:
    """Blend per-window maps into an image-grid volume with the model's window weights.

    ``result = Σ_k (w_k / Σw) · map_k`` over the windows that get an :meth:`add` (a window
    without one contributes zero), cropped to the image: the way ``sliding_window_inference``
    blends the model's own output. CAMs blend their per-window maps this way.

    >>> acc = WindowAccumulator(WindowWeights.for_model(model, shape), lead=(1,))
    >>> for w in acc.tiling.windows: acc.add(w, window_map)   # (1, *patch)
    >>> full = acc.result()                                    # (1, *shape)
    """

    def __init__(self, weights: WindowWeights, lead=(), dtype=torch.float32):
        self.weights = weights
        self.tiling = weights.tiling
        self.lead = tuple(int(n) for n in lead)
        self.sum = torch.zeros(self.lead + self.tiling.shape, dtype=dtype)

    def add(self, win: Window, value: torch.Tensor) -> None:
        """Add the map of window ``win`` (shape ``(*lead, *window_shape(win))``)."""
        v = torch.as_tensor(value).detach().to("cpu", self.sum.dtype)
        w = self.weights.of(win)
        self.tiling.add_to(self.sum, win, v if w is None else v * w)

    def result(self) -> torch.Tensor:
        return self.sum


# ------------------------------------------------------------------------ baselines --
BLUR_SIGMA = 5.0           # voxels, for baseline="blur"
BASELINE_NAMES = ("zero", "min", "mean", "blur")


def baseline_tensor(x: torch.Tensor, baseline, what: str = "baseline") -> torch.Tensor:
    """A reference image ``(C, *S)`` in model space for a prepared image ``x`` ``(C, *S)``.

    ``"zero"``; ``"min"`` / ``"mean"`` (per channel of ``x``); ``"blur"`` (Gaussian blur of
    ``x``, σ = 5 voxels; ``"blur:S"`` for σ = S); a number; or an array of shape ``(C, *S)``
    / ``(*S)`` (finite). Used for IG baselines, KernelSHAP's removed features and the
    faithfulness metric's removed voxels."""
    import numpy as np

    from ..checks import as_float, require_finite
    from ..errors import InputMismatchError, MethodError

    dims = tuple(range(1, x.ndim))
    if isinstance(baseline, (torch.Tensor, np.ndarray)) or (
            isinstance(baseline, (list, tuple)) and not isinstance(baseline, str)):
        b = torch.as_tensor(np.asarray(baseline.detach().cpu() if isinstance(baseline, torch.Tensor)
                                       else baseline), dtype=torch.float32)
        require_finite(b, f"The {what} array")
        if b.ndim == 0:
            return torch.full_like(x, float(b))
        if tuple(b.shape) == tuple(x.shape[1:]):
            b = b[None].expand_as(x)
        if tuple(b.shape) != tuple(x.shape):
            raise InputMismatchError(
                f"{what} array of shape {tuple(b.shape)} does not match the prepared image "
                f"{tuple(x.shape)} (model space: (C, *S) or (*S))")
        return b.contiguous().clone()
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, (bool, np.bool_)):
        return torch.full_like(x, as_float(what, baseline))
    if isinstance(baseline, str):
        name = baseline.strip().lower()
        if name in ("zero", "zeros", "0"):
            return torch.zeros_like(x)
        if name in ("min", "minimum"):
            return x.amin(dim=dims, keepdim=True).expand_as(x).clone()
        if name == "mean":
            return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
        if name == "blur" or name.startswith("blur:"):
            sigma = BLUR_SIGMA
            if ":" in name:
                try:
                    sigma = as_float("blur sigma", name.split(":", 1)[1], lo=0.0, lo_open=True)
                except MethodError:
                    raise MethodError(f"{what} {baseline!r}: expected 'blur' or 'blur:SIGMA' with a finite "
                                      "SIGMA > 0 (voxels)") from None
            from scipy.ndimage import gaussian_filter

            arr = x.detach().cpu().numpy()
            out = np.stack([gaussian_filter(a, sigma=sigma, mode="nearest") for a in arr])
            return torch.from_numpy(out.astype(np.float32))
    raise MethodError(f"{what} must be one of {', '.join(BASELINE_NAMES)}, a number or an array; got {baseline!r}")


# ------------------------------------------------------------------ blended logits --
def blended_logits(model, xb: torch.Tensor) -> torch.Tensor:
    """Logits of a batch of prepared images ``(B, C, *S)`` as the model outputs them
    (:meth:`SegModel.blended_logits`: its own windows, weights and padding)."""
    return model.blended_logits(xb)


def window_rows(model, xb: torch.Tensor) -> int:
    """Network rows a blended pass of the batch ``xb`` runs: every window of every image
    (one per image when it fits the patch) — what ``n_forward`` counts."""
    return int(xb.shape[0]) * len(model.tiling(tuple(int(s) for s in xb.shape[2:])).windows)


def f_hat_batch(ctx, xb: torch.Tensor, c: int | None = None, roi: torch.Tensor | None = None) -> torch.Tensor:
    """f̂ of a batch of prepared images ``(B, C, *S)`` -> ``(B,)`` float64 on CPU, from the
    model's blended output (inference mode). Counts the window rows on ``ctx``."""
    with torch.inference_mode():
        ctx.n_forward += window_rows(ctx.model, xb)
        return ctx.f_hat(blended_logits(ctx.model, xb), c, roi).double().cpu()


def f_hats_batch(ctxs, xb: torch.Tensor) -> torch.Tensor:
    """f̂ of every context's (class, RoI) from one pass of ``xb`` -> ``(B, K)`` float64.
    The forward (window) rows are booked on every context (they are shared)."""
    from ..targets import roi_sums

    model = ctxs[0].model
    with torch.inference_mode():
        logits = blended_logits(model, xb)
        out = roi_sums(logits, [c.target for c in ctxs], [c.roi for c in ctxs], model.sigmoid)
    rows = window_rows(model, xb)
    for c in ctxs:
        c.n_forward += rows
    return out.double().cpu()


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


def single_from_multi(multi):
    """A one-class explainer ``(ctx, **params)`` from a several-classes one ``(ctxs, **params)``
    (what :class:`~.registry.MethodSpec` ``fn`` expects, given its ``multi``)."""
    def run(ctx: Context, **params):
        res = yield from multi([ctx], **params)
        attr, extras = res[0]
        return attr, extras
    return run


def roi_cotangent(logits: torch.Tensor, c: int, roi: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """∂f̂_c/∂logits for a batch: the (weighted) RoI on the window grid in class c's channel."""
    go = torch.zeros_like(logits)
    if sigmoid:
        go[:, 0] = roi if c == 1 else -roi
    else:
        go[:, c] = roi
    return go
